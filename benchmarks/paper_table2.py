"""The paper's Table 2 setting in estimate mode: T5-Base / T5-Large, batch 100, length 128, fp32.

Peak memory of the first training step (what the paper's table matches) and of the steady state
(AdamW state allocated), next to the paper's numbers; optionally the largest batch per method
on an 80 GiB target. Traced under FakeTensorMode: no real memory is used.

Usage: python benchmarks/paper_table2.py [--models t5-base t5-large] [--max-batch]
"""

from __future__ import annotations

import argparse
import time

from common import machine

from contract.spec import JobSpec
from profiler.runner import run_job

PAPER_GB = {  # paper Table 2, A100 80GB, "GB"
    "t5-base": {
        "full": 17.66,
        "lora": 13.84,
        "wtacrs@0.3": 8.44,
        "wtacrs@0.1": 7.30,
        "lora+wtacrs@0.3": 6.50,
        "lora+wtacrs@0.1": 5.44,
    },
    "t5-large": {
        "full": 45.85,
        "lora": 36.83,
        "wtacrs@0.3": 21.58,
        "wtacrs@0.1": 18.46,
        "lora+wtacrs@0.3": 17.44,
        "lora+wtacrs@0.1": 14.64,
    },
}
METHODS = ["full", "checkpointing", "lora", "wtacrs@0.3", "wtacrs@0.1", "lora+wtacrs@0.3", "lora+wtacrs@0.1"]
GIB = 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["t5-base", "t5-large"])
    ap.add_argument("--max-batch", action="store_true", help="also search the largest batch on an 80 GiB target")
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()
    print(f"# paper Table 2 setting, estimate mode (FakeTensorMode); {machine()}")
    for model in args.models:
        t0 = time.time()
        measurements = ["peak_memory"] + (["max_batch_size"] if args.max_batch else [])
        spec = JobSpec.model_validate(
            {
                "model": model,
                "methods": METHODS,
                "seq_len": 128,
                "batch_sizes": [args.batch],
                "device": "estimate",
                "target_memory_gb": 80,
                "measurements": measurements,
                "steps": 1,
                "warmup": 0,
            }
        )
        result = run_job(spec, isolate=False).model_dump(mode="json")
        rows = {r["method"]: r for r in result["results"]}
        full_first = rows["full"]["first_step_peak_bytes"]
        print(f"\n## {model}, batch {args.batch}, length 128, fp32 ({time.time() - t0:.0f} s)")
        print(
            f"{'method':<18}{'1st step GiB':>13}{'ratio':>7}{'paper GB':>10}{'paper ratio':>12}{'steady GiB':>12}"
            f"{'activations GiB':>17}"
        )
        paper = PAPER_GB.get(model, {})
        for m in METHODS:
            r = rows[m]
            if r.get("error"):
                print(f"{m:<18} error: {r['error']}")
                continue
            first = r["first_step_peak_bytes"]
            p = paper.get(m)
            pr = f"{paper['full'] / p:.2f}x" if p else "-"
            print(
                f"{m:<18}{first / GIB:13.2f}{full_first / first:6.2f}x{(p or float('nan')):10.2f}{pr:>12}"
                f"{r['peak_bytes'] / GIB:12.2f}{r['activation_bytes'] / GIB:17.2f}"
            )
        if args.max_batch:
            mb = {r["method"]: r for r in result["max_batch"]}
            base = mb["full"]["max_batch_size"]
            print("\nlargest batch on 80 GiB (estimate, steady state, length 128):")
            for m in METHODS:
                r = mb[m]
                print(
                    f"  {m:<18}{r['max_batch_size']:>6}  ({r['max_batch_size'] / max(base, 1):.2f}x full, "
                    f"{len(r['probes'])} probes)"
                )
        for e in result["errors"]:
            print("error:", e)


if __name__ == "__main__":
    main()
