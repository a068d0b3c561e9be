"""Host time per training step where the arithmetic is negligible: a CPU proxy for a GPU step's
launch-bound regime (every op costs the host its Python and dispatcher work whatever its size).

Usage:
  PYTHONPATH=. python benchmarks/host_overhead.py [--families bert t5 llama] [--rounds 5] [--json FILE]

Each family's tiny test model (tests/wtacrs/models.py; batch 1, length 8), forward and
backward, one CPU thread: unpatched, then the WTA-CRS preset (ratio 0.3) with the custom ops called
through the dispatcher (as under a dispatch mode or torch.compile) and called directly (plain
eager code, `wtacrs.dispatch`). Steps go round-robin, the median of each is printed with its ratio
to the unpatched model. What it is not: a GPU number. On a GPU the ops' CPU reference code
(counted here) is replaced by Triton kernels, so the direct column overstates what is left there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from common import machine  # noqa: E402

import wtacrs  # noqa: E402
from tests.wtacrs.models import inputs, tiny  # noqa: E402
from wtacrs import dispatch  # noqa: E402

VARIANTS = ("unpatched", "dispatcher", "direct")


def measure(family: str, rounds: int, steps: int) -> dict[str, float]:
    batch = inputs(family, batch=1, seq=8)
    models = {"unpatched": tiny(family), "patched": wtacrs.apply_wtacrs(tiny(family), wtacrs.WTACRSConfig(ratio=0.3))}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}

    def step(model) -> None:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()

    for variant in VARIANTS * 2:  # warm-up: lazy state, allocator
        dispatch.DIRECT = variant != "dispatcher"
        step(models["unpatched" if variant == "unpatched" else "patched"])
    for _ in range(rounds):
        for variant in VARIANTS:
            dispatch.DIRECT = variant != "dispatcher"
            model = models["unpatched" if variant == "unpatched" else "patched"]
            for _ in range(steps):
                t0 = time.perf_counter()
                step(model)
                times[variant].append(time.perf_counter() - t0)
    dispatch.DIRECT = True
    return {v: statistics.median(t) * 1000 for v, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["bert", "t5", "llama"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# Host time per step (CPU proxy), 1 thread; {machine()}")
    print(
        "| family | unpatched ms | preset, dispatcher ms | preset, direct ms | dispatcher x unpatched | direct x unpatched |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    results = {}
    for family in args.families:
        ms = results[family] = measure(family, args.rounds, args.steps)
        base = ms["unpatched"]
        print(
            f"| {family} | {base:.2f} | {ms['dispatcher']:.2f} | {ms['direct']:.2f} "
            f"| {ms['dispatcher'] / base:.2f}x | {ms['direct'] / base:.2f}x |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "ms_per_step": results}, indent=1))


if __name__ == "__main__":
    main()
