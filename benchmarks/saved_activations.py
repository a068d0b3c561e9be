"""Saved-activation bytes per module, full fine-tuning vs WTA-CRS (CPU, fp32).

Counted per storage with saved_tensors_hooks, parameters excluded (wtacrs.memory).
Usage: python benchmarks/saved_activations.py [--batch 8] [--seq 128] [--ratio 0.3]
"""

from __future__ import annotations

import argparse

from common import batch, bert_base, machine, variant

from wtacrs.memory import SavedTensorCounter

MB = 2**20


def measure(model, inputs) -> SavedTensorCounter:
    counter = SavedTensorCounter(model)
    with counter.track():
        loss = model(**inputs).loss
    loss.backward()
    return counter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--ratio", type=float, default=0.3)
    args = ap.parse_args()
    base = bert_base()
    inputs = batch(base, args.batch, args.seq)
    methods = ["full", f"layer-only@{args.ratio}", f"wtacrs@{args.ratio}"]
    counters = {m: measure(variant(base, m), inputs) for m in methods}
    print(f"# BERT-base, batch {args.batch}, length {args.seq}, fp32, CPU; {machine()}")
    full = counters["full"].total
    for m, c in counters.items():
        print(f"{m:>18}: {c.total / MB:8.1f} MiB saved activations, full / this = {full / c.total:.2f}x")
    print("\nper module (layer index folded, MiB):")
    rows = sorted({k for c in counters.values() for k in c.grouped()})
    print(f"{'module':<48}" + "".join(f"{m:>18}" for m in methods))
    for row in rows:
        vals = [c.grouped().get(row, 0) / MB for c in counters.values()]
        if max(vals) >= 0.05:
            print(f"{row:<48}" + "".join(f"{v:18.2f}" for v in vals))


if __name__ == "__main__":
    main()
