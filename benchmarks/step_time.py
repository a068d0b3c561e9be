"""Training-step time at equal batch, methods interleaved in one run (CPU or CUDA).

Usage: python benchmarks/step_time.py [--batch 8] [--seq 128] [--steps 10] [--methods full wtacrs@0.3 ...]
Reports the median step time (forward + backward + AdamW step) and the ratio to full.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import batch, bert_base, machine, variant


def step_fn(model, inputs):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["full", "wtacrs@0.3", "layer-only@0.3"])
    args = ap.parse_args()
    base = bert_base()
    inputs = batch(base, args.batch, args.seq)
    steps = {m: step_fn(variant(base, m), inputs) for m in args.methods}
    for fn in steps.values():
        for _ in range(args.warmup):
            fn()
    times: dict[str, list[float]] = {m: [] for m in args.methods}
    for _ in range(args.steps):  # interleaved so drift in machine load hits every method alike
        for m, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[m].append(time.perf_counter() - t0)
    print(
        f"# BERT-base step time, batch {args.batch}, length {args.seq}, fp32, {torch.get_num_threads()} threads; {machine()}"
    )
    ref = statistics.median(times[args.methods[0]])
    for m in args.methods:
        med = statistics.median(times[m])
        spread = (max(times[m]) - min(times[m])) / med
        print(
            f"{m:>16}: median {med * 1000:8.1f} ms  (spread {spread:.0%})  ratio to {args.methods[0]}: {med / ref:.3f}x"
        )


if __name__ == "__main__":
    main()
