"""Weight-gradient fidelity of WTA vs CRS on the real activations and gradients of a training step.

For every layer WTA-CRS would replace, capture X and dY of one step of the unpatched model, then
compute the expected relative error sqrt(E||est - dY^T X||^2) / ||dY^T X|| in closed form
(wtacrs.expected_squared_error: no sampling noise) for "wta" and "crs" at the same k, with the
probability factors the layer can use:
  activation  p ∝ ||x_i||                       (norm_source="activation")
  running     p ∝ ||x_i|| * mean_b ||dY_b,pos||  from the previous batch (norm_source="running")
  oracle      p ∝ ||x_i|| * ||dY_i||             (the unreachable optimum, for reference)

Usage: python benchmarks/fidelity.py [--model bert-base|minilm-sst2] [--batch 8] [--seq 128] [--ratio 0.3]
"""

from __future__ import annotations

import argparse
import math
import re
import statistics

import torch
from common import batch, bert_base, machine

from wtacrs import DEFAULT_TARGETS, expected_squared_error


def minilm_sst2(batch_size: int, seq_len: int, seed: int):
    """all-MiniLM-L6-v2's real weights and random SST-2 training batches (the profiler's loaders)."""
    from profiler.trial.textdata import default_sst2_path, read_tsv
    from profiler.trial.zoo import load_pretrained

    torch.manual_seed(seed)
    _, model, tok = load_pretrained("all-minilm-l6-v2")
    sentences, labels = read_tsv(default_sst2_path())
    rng = torch.Generator().manual_seed(seed)

    def sample():
        pick = torch.randint(0, len(sentences), (batch_size,), generator=rng).tolist()
        enc = tok(
            [sentences[i] for i in pick], padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt"
        )
        return {**enc, "labels": torch.tensor([labels[i] for i in pick])}

    return model, sample


def capture(model, inputs, patterns):
    data = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(re.search(p, name) for p in patterns):
            hooks.append(
                module.register_forward_hook(lambda m, a, o, n=name: data.setdefault(n, {}).update(x=a[0].detach()))
            )
            hooks.append(module.register_full_backward_hook(lambda m, gi, go, n=name: data[n].update(g=go[0].detach())))
    model.zero_grad(set_to_none=True)
    model(**inputs).loss.backward()
    for h in hooks:
        h.remove()
    return data


def rel_error(x, g, weights, k, method):
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    exact = (g2.t().double() @ x2.double()).norm()
    mse = expected_squared_error(g2.t(), x2, weights, k, method)
    return math.sqrt(mse.item()) / max(exact.item(), 1e-30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bert-base", choices=["bert-base", "minilm-sst2"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--ratio", type=float, default=0.3)
    args = ap.parse_args()
    if args.model == "bert-base":
        model = bert_base()
        history, current = batch(model, args.batch, args.seq, seed=1), batch(model, args.batch, args.seq, seed=2)
    else:
        model, sample = minilm_sst2(args.batch, args.seq, seed=0)
        history, current = sample(), sample()
    patterns = DEFAULT_TARGETS["bert"]
    past = capture(model, history, patterns)
    now = capture(model, current, patterns)
    rows = []
    for name, d in now.items():
        x, g = d["x"], d["g"]
        n = x.numel() // x.shape[-1]
        k = max(1, math.ceil(args.ratio * n))
        xn = torch.linalg.vector_norm(x.float(), dim=-1)  # [B, L]
        # With the preset, q/k/v read a LayerNorm output that is recomputable, so each layer
        # draws its own sample with its own factor (no shared copy to save).
        per_pos = torch.linalg.vector_norm(past[name]["g"].float(), dim=-1).mean(0)
        sources = {
            "activation": xn.reshape(-1),
            "running": (xn * (per_pos + 0.2 * per_pos.mean())).reshape(-1),
            "oracle": (xn * torch.linalg.vector_norm(g.float(), dim=-1)).reshape(-1),
        }
        rows.append((name, {s: {m: rel_error(x, g, w, k, m) for m in ("wta", "crs")} for s, w in sources.items()}))
    print(
        f"# fidelity {args.model}, batch {args.batch}, length {args.seq}, ratio {args.ratio}, {len(rows)} layers; {machine()}"
    )
    print(f"{'probability':<12}{'wta < crs':>12}{'median rel err wta':>22}{'median rel err crs':>22}")
    for s in ("activation", "running", "oracle"):
        wins = sum(r[s]["wta"] < r[s]["crs"] for _, r in rows)
        med = {m: statistics.median(r[s][m] for _, r in rows) for m in ("wta", "crs")}
        print(f"{s:<12}{wins:>6}/{len(rows):<5}{med['wta']:>22.4f}{med['crs']:>22.4f}")
    print("\nper layer (running): name, wta, crs")
    for name, r in rows[:: max(1, len(rows) // 12)]:
        print(f"  {name:<55}{r['running']['wta']:10.4f}{r['running']['crs']:10.4f}")


if __name__ == "__main__":
    main()
