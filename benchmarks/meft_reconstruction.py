"""MEFT's reconstruction error: adapter gradients of the reversible backward against ordinary
backprop through the same reversible model (`set_reversible(model, False)`), same batch, same
dropout masks; fp32 and bf16 autocast; the start-point deviation from the pre-trained model.

Usage: PYTHONPATH=. python benchmarks/meft_reconstruction.py [--model bert-base] [--batch 8] [--seq 128]
"""

from __future__ import annotations

import argparse
import copy

import torch

from contract.spec import JobSpec
from profiler.trial.zoo import build_model, make_batch
from wtacrs.meft import MEFTConfig, apply_meft, set_reversible


def grads(model, batch, reversible, dtype):
    set_reversible(model, reversible)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        loss = model(**batch).loss
    loss.backward()
    return {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None and ".meft_" in n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bert-base")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    spec = JobSpec.model_validate(
        {"model": args.model, "methods": ["full"], "batch_sizes": [args.batch], "seq_len": args.seq, "device": "cpu"}
    )
    torch.manual_seed(0)
    family, base = build_model(spec)
    batch = make_batch(family, base.config, args.batch, args.seq, torch.device("cpu"), seed=0)
    print(f"{args.model} B={args.batch} L={args.seq}: relative error of the adapter gradients (reversible vs backprop)")
    print("| variant | dtype | median layer | worst layer | start-point deviation (mean / last readout) |")
    print("|---|---|---:|---:|---:|")
    plain = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        want = base.eval()(**plain, output_hidden_states=True).hidden_states[-1]
    base.train()
    for variant in ("meft1", "meft2", "meft3"):
        dev = []
        for readout in ("mean", "last"):
            m = apply_meft(copy.deepcopy(base), MEFTConfig(variant=variant, readout=readout)).eval()
            with torch.no_grad():
                got = m(**plain, output_hidden_states=True).hidden_states[-1]
            dev.append(((got - want).norm() / want.norm()).item())
        model = apply_meft(copy.deepcopy(base), MEFTConfig(variant=variant)).train()
        with torch.no_grad():  # trained-looking adapters, so every adapter weight has a gradient
            for n, p in model.named_parameters():
                if ".meft_" in n and ".up." in n:
                    p.normal_(0, 0.02)
        for dtype in ("fp32", "bf16"):
            rev, exact = grads(model, batch, True, dtype), grads(model, batch, False, dtype)
            errs = sorted(((rev[n] - exact[n]).norm() / exact[n].norm()).item() for n in exact)
            print(
                f"| {variant} | {dtype} | {errs[len(errs) // 2]:.2e} | {errs[-1]:.2e} | {dev[0]:.3f} / {dev[1]:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
