"""Estimate (FakeTensorMode) vs measured (CPU allocator via torch.profiler) peak memory.

Same spec, both modes, every method, three batch sizes per model. Prints the relative error of
the estimate for the first-step peak and the steady-state peak.

Usage: python benchmarks/estimate_vs_measured.py [--models bert-tiny gpt2-tiny t5-tiny bert-base]
"""

from __future__ import annotations

import argparse
import time

from common import machine

from contract.spec import JobSpec
from profiler.runner import run_job

METHODS = ["full", "checkpointing", "lora", "wtacrs@0.3", "lora+wtacrs@0.3", "crs@0.3", "topk@0.3"]
SETTINGS = {
    "bert-tiny": (64, [2, 8, 32]),
    "gpt2-tiny": (64, [2, 8, 32]),
    "t5-tiny": (64, [2, 8, 32]),
    "llama-tiny": (64, [2, 8, 32]),
    "bert-base": (128, [2, 4, 8]),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["bert-tiny", "gpt2-tiny", "t5-tiny", "bert-base"])
    args = ap.parse_args()
    print(f"# estimate vs measured (CPU allocator), fp32; {machine()}")
    worst = 0.0
    for model in args.models:
        seq, batches = SETTINGS[model]
        base = {
            "model": model,
            "methods": METHODS,
            "seq_len": seq,
            "batch_sizes": batches,
            "measurements": ["peak_memory"],
            "steps": 1,
            "warmup": 0,
        }
        t0 = time.time()
        measured = run_job(JobSpec.model_validate({**base, "device": "cpu"}), isolate=False).model_dump(mode="json")
        estimated = run_job(JobSpec.model_validate({**base, "device": "estimate"}), isolate=False).model_dump(
            mode="json"
        )
        print(f"\n## {model}, length {seq} ({time.time() - t0:.0f} s)")
        print(f"{'method':<18}{'batch':>6}{'measured MiB':>14}{'estimate MiB':>14}{'err 1st':>9}{'err peak':>10}")
        for m, e in zip(measured["results"], estimated["results"]):
            if m.get("error") or e.get("error"):
                print(f"{m['method']:<18}{m['batch_size']:>6} error: {m.get('error') or e.get('error')}")
                continue
            err_first = e["first_step_peak_bytes"] / m["first_step_peak_bytes"] - 1
            err_peak = e["peak_bytes"] / m["peak_bytes"] - 1
            worst = max(worst, abs(err_first), abs(err_peak))
            print(
                f"{m['method']:<18}{m['batch_size']:>6}{m['peak_bytes'] / 2**20:14.1f}{e['peak_bytes'] / 2**20:14.1f}"
                f"{err_first:+9.2%}{err_peak:+10.2%}"
            )
    print(f"\nworst |error| over all rows: {worst:.2%}")


if __name__ == "__main__":
    main()
