"""Accuracy next to memory: fine-tune all-MiniLM-L6-v2 (real weights) on GLUE SST-2 with each method.

Runs the profiler's `convergence` measurement (the same code path as a job submitted to the
service: one child process per method) for several seeds, writes every job's JSON to --out, and
prints held-out accuracy per method and seed, the mean over seeds, the paired difference to the
reference method (full for sampling methods, lora for lora+...), peak memory and tokens/s.
Each seed is one job: every method sees the same weights, batches and number of steps.

Usage: python benchmarks/accuracy.py [--seeds 0 1 2] [--methods full wtacrs@0.3 ...]
           [--side crs@0.3 topk@0.3 (first seed only, or --side-every-seed)] [--example-cache]
           [--tag=-side] [--train 1600] [--epochs 2]
       python benchmarks/accuracy.py --report out/accuracy   (re-print a finished run)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from common import machine

from contract.spec import JobSpec
from profiler.runner import run_job

HEADLINE = ["full", "wtacrs@0.3", "lora", "lora+wtacrs@0.3"]
SIDE = ["crs@0.3", "topk@0.3"]


def reference(method: str) -> str:
    return "lora" if method.startswith("lora") else "full"


def spec_for(args, seed: int, methods: list[str], norm_source: str = "running") -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": "all-minilm-l6-v2",
            "methods": methods,
            "seq_len": args.seq,
            "measurements": ["convergence"],
            "device": "cpu",
            "seed": seed,
            "lr": args.lr,
            "timeout_s": 3600,
            "convergence": {
                "train_examples": args.train,
                "val_examples": args.val,
                "epochs": args.epochs,
                "batch_size": args.batch,
                "adapter_lr": args.adapter_lr,
                "norm_source": norm_source,
            },
        }
    )


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    side = lambda s: args.side if s == args.seeds[0] or args.side_every_seed else []  # noqa: E731
    jobs = [(f"seed{s}{args.tag}", spec_for(args, s, args.methods + side(s))) for s in args.seeds]
    if args.example_cache:
        jobs.insert(1, (f"seed{args.seeds[0]}-example", spec_for(args, args.seeds[0], ["wtacrs@0.3"], "example")))
    for name, spec in jobs:
        if (out / f"{name}.json").exists():
            print(f"{name}: already done, kept", flush=True)
            continue
        t0 = time.time()
        result = run_job(spec, job_id=name, progress=lambda d, t, m: print(f"  [{d}/{t}] {m}", flush=True))
        result = result.model_dump(mode="json")
        (out / f"{name}.json").write_text(json.dumps(result))
        print(f"{name}: {result['status']} in {time.time() - t0:.0f} s {result['errors'] or ''}", flush=True)


def report(folder: Path) -> None:
    rows = []
    for path in sorted(folder.glob("*.json")):
        job = json.loads(path.read_text())
        for c in job.get("convergence", []):
            rows.append({**c, "job": path.stem})
    if not rows:
        sys.exit(f"no convergence rows under {folder}")
    first = rows[0]
    print(
        f"all-MiniLM-L6-v2 on SST-2 ({first['data']}): {first['train_examples']} train / {first['val_examples']} "
        f"held-out examples, {first['epochs']} epochs, {first['steps']} steps of batch {first['batch_size']}, "
        f"length {first['seq_len']}"
    )
    # the reference of a row: the same seed's run of full (or lora), with the preset's norm source
    runs = [r for r in rows if not r["job"].endswith("-example")]
    acc = {(r["seed"], r["method"]): r["accuracy"] for r in runs}
    print(
        f"\n{'job':<16} {'method':<18} {'norms':<8} {'acc %':>7} {'vs ref':>7} {'val loss':>8} {'peak MiB':>9} "
        f"{'cache KiB':>9} {'tok/s':>7} {'train s':>8}"
    )
    for r in rows:
        ref = acc.get((r["seed"], reference(r["method"])))
        diff = (
            f"{100 * (r['accuracy'] - ref):+.2f}" if ref is not None and r["method"] != reference(r["method"]) else ""
        )
        print(
            f"{r['job']:<16} {r['method']:<18} {r['norm_source'] or '-':<8} {100 * r['accuracy']:7.2f} {diff:>7} "
            f"{r['val_loss']:8.4f} {r['peak_bytes'] / 2**20:9.1f} {r['cache_bytes'] / 1024:9.1f} "
            f"{r['tokens_per_s']:7.0f} {r['train_time_s']:8.0f}"
        )
    print("\nmean over seeds (paired difference to the reference, same seed):")
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = {r["seed"]: r["accuracy"] for r in runs if r["method"] == method}
        diffs = [100 * (a - acc[(s, reference(method))]) for s, a in mine.items() if (s, reference(method)) in acc]
        mean = 100 * statistics.mean(mine.values())
        line = f"  {method:<18} n={len(mine)} accuracy {mean:.2f}%"
        if method != reference(method) and diffs:
            spread = f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
            line += f"  vs {reference(method)}: {statistics.mean(diffs):+.2f}{spread} points"
        print(line)
    print(f"\n{machine()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=HEADLINE)
    ap.add_argument("--side", nargs="*", default=SIDE, help="extra methods, first seed only")
    ap.add_argument("--side-every-seed", action="store_true", help="the --side methods on every seed")
    ap.add_argument("--tag", default="", help="suffix of the job files (to add methods to finished seeds)")
    ap.add_argument("--example-cache", action="store_true", help="also wtacrs@0.3 with norm_source='example'")
    ap.add_argument("--train", type=int, default=1600)
    ap.add_argument("--val", type=int, default=872)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--adapter-lr", type=float, default=1e-3)
    ap.add_argument("--out", default="out/accuracy")
    ap.add_argument("--report", metavar="FOLDER", help="only print the report of a finished run")
    args = ap.parse_args()
    if args.report:
        report(Path(args.report))
        return
    run(args)
    report(Path(args.out))


if __name__ == "__main__":
    main()
