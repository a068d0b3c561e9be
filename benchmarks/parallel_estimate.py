"""Per-rank memory of FSDP fine-tuning, estimated without a GPU: rank 0 of `world_size` traced under
FakeTensorMode with PyTorch's fake process group, on an H100/H200 model of the device (cuda-sm90).

For each method: the first-step and steady-state peak of one rank at micro-batch 1, the steady
breakdown, and the largest micro-batch per rank that fits `--target-gb` (the max_batch_size search,
one trace per probe). Throughput needs GPUs (device 'cuda'); an estimate runs no kernels.

Usage: python benchmarks/parallel_estimate.py [--models llama-7b] [--world-sizes 8 16]
           [--methods full lora checkpointing wtacrs@0.3 lora+wtacrs@0.3] [--seq-len 2048]
"""

from __future__ import annotations

import argparse
import time

from common import machine

from contract.spec import JobSpec
from profiler.runner import run_job

GIB = 2**30
METHODS = ["full", "lora", "checkpointing", "wtacrs@0.3", "lora+wtacrs@0.3"]
# LLaMA-13B's published config, as family + overrides (no preset for it)
MODELS = {
    "llama-7b": "llama-7b",
    "llama-13b": {
        "family": "llama",
        "overrides": {
            "hidden_size": 5120,
            "intermediate_size": 13824,
            "num_hidden_layers": 40,
            "num_attention_heads": 40,
            "num_key_value_heads": 40,
            "vocab_size": 32000,
            "max_position_embeddings": 4096,
        },
    },
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["llama-7b"], choices=sorted(MODELS))
    ap.add_argument("--world-sizes", nargs="+", type=int, default=[8, 16])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--target-gb", type=float, default=80)
    ap.add_argument("--upper", type=int, default=256, help="never probe beyond this micro-batch")
    args = ap.parse_args()
    print(f"# FSDP per-rank estimate, bf16-weights, length {args.seq_len}, {args.target_gb:g} GiB; {machine()}")
    print(
        "| model | ranks | method | 1st-step GiB (mb 1) | steady GiB (mb 1) | params / grads / optim / act / other GiB "
        "| max micro-batch | tokens/step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    total = time.time()
    for name in args.models:
        for world in args.world_sizes:
            # one job per table, as a user submits it: its methods in a child per core (profiler/runner.py)
            spec = JobSpec.model_validate(
                {
                    "model": MODELS[name],
                    "methods": args.methods,
                    "seq_len": args.seq_len,
                    "batch_sizes": [1],
                    "dtype": "bf16-weights",
                    "measurements": ["peak_memory", "max_batch_size"],
                    "device": "estimate",
                    "target_memory_gb": args.target_gb,
                    "max_batch": {"upper": args.upper},
                    "parallel": {"strategy": "fsdp", "world_size": world},
                }
            )
            t0 = time.time()
            result = run_job(spec)
            print(f"<!-- {name} x{world}: {time.time() - t0:.0f} s for the job; errors: {result.errors} -->")
            largest = {m.method: m for m in result.max_batch}
            for row in result.results:
                mb = largest.get(row.method)
                if row.error or mb is None:
                    print(f"| {name} | {world} | {row.method} | error: {row.error or result.errors} |")
                    continue
                parts = " / ".join(f"{row.breakdown[k] / GIB:.2f}" for k in row.breakdown)
                print(
                    f"| {name} | {world} | {row.method} | {row.first_step_peak_bytes / GIB:.2f} | "
                    f"{row.peak_bytes / GIB:.2f} | {parts} | {mb.max_batch_size}{'+' if mb.capped_at_upper else ''} "
                    f"| {world * mb.max_batch_size * args.seq_len} |",
                    flush=True,
                )
    print(f"<!-- the whole table: {time.time() - total:.0f} s -->")


if __name__ == "__main__":
    main()
