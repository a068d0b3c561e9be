"""Issue 28: saved activations and peak memory per method, MEFT / offloading / selective
checkpointing beside full, LoRA, checkpointing and WTA-CRS.

Usage: PYTHONPATH=. python benchmarks/new_methods.py --model bert-base --device estimate [--batch 8] [--seq 128]
           [--methods full meft1 ...] [--json out/new_methods/bert-base-estimate.json]
Prints one markdown row per method: saved activations, first-step peak, steady peak (MiB), the
ratio of saved activations to full's; for offloading also the bytes moved to the host.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from contract.methods import parse_method
from contract.spec import JobSpec
from profiler.runner import run_job
from profiler.trial.build import build_trial, release

METHODS = [
    "full", "lora", "checkpointing", "selective-checkpointing", "lora+selective-checkpointing", "offload",
    "lora+offload", "wtacrs@0.3", "lora+wtacrs@0.3", "meft1", "meft2", "meft3",
]  # fmt: skip
MIB = 2**20


def host_bytes(spec: JobSpec, method: str) -> int | None:
    """Bytes offloading moves to the host in one forward (traced under FakeTensorMode)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from profiler.instruments.cuda_model import SM90
    from wtacrs.offload import offload_stats

    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        trial = build_trial(spec, parse_method(method), spec.batch_sizes[0], torch.device("cpu"), mode, SM90)
        try:
            trial.forward_backward()
            stats = offload_stats(trial.model)
        finally:
            release(trial)
    return stats and stats["host_bytes"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bert-base")
    ap.add_argument("--device", default="estimate", choices=["estimate", "cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for method in args.methods:
        spec = JobSpec.model_validate(
            {"model": args.model, "methods": [method], "batch_sizes": [args.batch], "seq_len": args.seq,
             "dtype": "fp32", "measurements": ["peak_memory"], "device": args.device, "steps": 1, "warmup": 0,
             "timeout_s": 3600}
        )  # fmt: skip
        t0 = time.time()
        result = run_job(spec, isolate=False).model_dump(mode="json")
        row = result["results"][0] if result["results"] else {"method": method, "error": result["errors"]}
        if "offload" in method and args.device == "estimate" and not row.get("error"):
            row["host_bytes"] = host_bytes(spec, method)
        row["wall_s"] = round(time.time() - t0, 1)
        rows.append(row)
        print(method, row.get("error") or "", f"{row['wall_s']} s", flush=True)
    full = next((r for r in rows if r["method"] == "full" and not r.get("error")), None)
    print(f"\n{args.model} B={args.batch} L={args.seq} fp32 {args.device}\n")
    print("| method | saved activations MiB | x full | first-step peak MiB | peak MiB | host MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if r.get("error"):
            print(f"| {r['method']} | error: {str(r['error'])[:80]} | | | | |")
            continue
        ratio = r["activation_bytes"] / full["activation_bytes"] if full else float("nan")
        host = f"{r['host_bytes'] / MIB:.1f}" if r.get("host_bytes") is not None else ""
        print(
            f"| {r['method']} | {r['activation_bytes'] / MIB:.1f} | {ratio:.3f} | "
            f"{r['first_step_peak_bytes'] / MIB:.1f} | {r['peak_bytes'] / MIB:.1f} | {host} |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
