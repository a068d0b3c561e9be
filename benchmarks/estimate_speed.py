"""How long an estimate study takes, and that the fast path answers what today's path answers.

One run, side by side on this machine: (1) the unit, one trace of `full` at the largest batch, as
today's path traces it (WTACRS_SECOND_STEP=traced: both steps traced, profiler/trial/measure.py);
(2) the study on today's path (that, and WTACRS_TRACE_CACHE=off: every trace afresh, the
largest-batch search from nothing); (3) the same study with a cold trace cache and step 2 written from
step 1 (instruments/second_step.py; the search starts from the sweep's traces, guided by the replay of their event logs, profiler/instruments/replay.py); (4) the same study again, warm (what a second user asking gets). Each study
runs as `wtacrs-prof run` does (methods in child processes, one per core at once). Prints each
wall time in units of (1); whether (3) and (4) give the same largest batch per method and the same
traced sweep rows, byte for byte, as (2); and how far their replayed rows (the sweep's batches
between its smallest and largest, producers/sweep.py) are from (2)'s traces of them.

Usage: python benchmarks/estimate_speed.py [--model t5-large] [--methods full lora ...]
           [--batches 16 32 64 100] [--seq-len 128] [--target-gb 80]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from common import machine

from contract.methods import parse_method
from contract.spec import JobSpec
from profiler.runner import run_job
from profiler.trial.measure import SECOND_STEP_ENV

METHODS = ["full", "lora", "checkpointing", "wtacrs@0.3", "lora+wtacrs@0.1"]


def _today(on: bool) -> None:
    """Today's path: every step of a trace traced (profiler/trial/measure.py), no cache."""
    os.environ[SECOND_STEP_ENV] = "traced" if on else "written"


def _study(spec: JobSpec, cache: str) -> tuple[float, object]:
    os.environ["WTACRS_TRACE_CACHE"] = cache
    _today(cache == "off")
    start = time.perf_counter()
    result = run_job(spec, isolate=True)
    return time.perf_counter() - start, result


def _answers(result) -> tuple[list, list]:
    largest = [(m.method, m.max_batch_size) for m in result.max_batch]
    sweep = [r.model_dump() for r in result.results if not r.predicted]
    return largest, sweep


def _replayed_error(result, today) -> float:
    """The largest difference, over the replayed rows' peaks and breakdown categories, from today's
    trace of the same (method, batch), as a fraction of that trace's peak."""
    traced = {(r.method, r.batch_size): r for r in today.results}
    worst = 0.0
    for row in (r for r in result.results if r.predicted):
        was = traced[row.method, row.batch_size]
        pairs = [(row.peak_bytes, was.peak_bytes), (row.first_step_peak_bytes, was.first_step_peak_bytes)]
        pairs += [(row.breakdown[c], was.breakdown[c]) for c in was.breakdown]
        pairs += [(row.first_step_breakdown[c], was.first_step_breakdown[c]) for c in was.first_step_breakdown]
        worst = max(worst, *(abs(a - b) / was.peak_bytes for a, b in pairs))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="t5-large")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 32, 64, 100])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--target-gb", type=float, default=80.0)
    args = parser.parse_args()
    spec = JobSpec.model_validate(
        {
            "model": args.model,
            "methods": args.methods,
            "seq_len": args.seq_len,
            "batch_sizes": args.batches,
            "measurements": ["peak_memory", "max_batch_size"],
            "device": "estimate",
            "target_memory_gb": args.target_gb,
        }
    )
    print(machine())
    from profiler.producers.single import trial_row

    _today(True)
    start = time.perf_counter()
    trial_row(spec, parse_method("full"), max(args.batches))
    unit = time.perf_counter() - start
    print(f"unit: one trace of full at batch {max(args.batches)}, as today: {unit:.1f} s")
    _today(False)
    start = time.perf_counter()
    trial_row(spec, parse_method("full"), max(args.batches))
    written = time.perf_counter() - start
    print(f"the same trace with step 2 written from step 1: {written:.1f} s ({unit / written:.2f}x faster)")
    today_s, today = _study(spec, "off")
    with tempfile.TemporaryDirectory(prefix="wtacrs-traces-") as folder:
        cold_s, cold = _study(spec, folder)
        warm_s, warm = _study(spec, folder)
    print(f"{'path':<28}{'wall s':>8}{'x unit':>8}  largest batch per method")
    for name, seconds, result in (
        ("today (cache off)", today_s, today),
        ("cold cache", cold_s, cold),
        ("warm cache", warm_s, warm),
    ):
        largest = ", ".join(f"{m} {b}" for m, b in _answers(result)[0])
        print(f"{name:<28}{seconds:>8.1f}{seconds / unit:>8.1f}  {largest}")
    for name, result in (("cold", cold), ("warm", warm)):
        largest, sweep = _answers(result)
        same = largest == _answers(today)[0] and all(row in _answers(today)[1] for row in sweep)
        replayed = sum(r.predicted for r in result.results)
        print(
            f"{name}: largest batches and traced sweep rows identical to today's path: {same}; "
            f"{replayed} rows replayed, worst peak/breakdown difference {_replayed_error(result, today):.2e} "
            f"of the peak; errors: {result.errors}"
        )


if __name__ == "__main__":
    main()
