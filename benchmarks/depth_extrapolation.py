"""Does a repeated block pay? Traces a preset at a few depths and checks the line through them
against the trace at full depth, per method (issue 26's optional "trace one block and account for
the rest"). Prints each depth's trace time, the peak's increment per block, and the difference
between the extrapolated and the traced peaks (steady and first step) at full depth.

A peak is the largest of many moments, each affine in the depth; which moment wins can change with
the depth, so equal increments at small depths do not make the line right at full depth: this
measures where it is and is not.

Usage: python benchmarks/depth_extrapolation.py [--model t5-large] [--methods full lora ...]
           [--depths 1 2 3 4] [--batch 100] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import os
import time

from common import machine

from contract.methods import parse_method
from contract.presets import PRESETS
from contract.spec import JobSpec
from profiler.producers.single import trial_row
from profiler.trial.zoo import build_config

DEPTH_KEYS = {"t5": ("num_layers", "num_decoder_layers")}  # the other families here: num_hidden_layers


def full_depth(model: str, seq_len: int) -> int:
    """A preset's number of blocks (per stack), as its built config says."""
    family, _ = PRESETS[model]
    return getattr(build_config(model, seq_len)[1], DEPTH_KEYS.get(family, ("num_hidden_layers",))[0])


def at_depth(model: str, depth: int | None, batch: int, seq_len: int) -> JobSpec:
    """An estimate spec of the preset with `depth` blocks per stack (None: as it is)."""
    family, preset = PRESETS[model]
    keys = DEPTH_KEYS.get(family, ("num_hidden_layers",))
    overrides = dict(preset) | ({k: depth for k in keys} if depth else {})
    fields = {"model": {"family": family, "overrides": overrides}, "methods": ["full"], "seq_len": seq_len}
    fields |= {"batch_sizes": [batch], "measurements": ["peak_memory"], "device": "estimate"}
    return JobSpec.model_validate(fields)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="t5-large", choices=sorted(PRESETS))
    ap.add_argument("--methods", nargs="+", default=["full", "lora", "checkpointing", "wtacrs@0.3"])
    ap.add_argument("--depths", nargs="+", type=int, default=[1, 2, 3, 4])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args()
    os.environ["WTACRS_TRACE_CACHE"] = "off"  # every trace afresh: the times are the point
    full = full_depth(args.model, args.seq_len)

    def spec(depth: int | None) -> JobSpec:
        return at_depth(args.model, depth, args.batch, args.seq_len)

    print(f"{machine()}; {args.model} ({full} blocks), batch {args.batch}, length {args.seq_len}, estimate")
    a, b = args.depths[-2:]
    for name in args.methods:
        method, peaks, times = parse_method(name), {}, []
        for depth in [*args.depths, None]:
            start = time.perf_counter()
            row = trial_row(spec(depth), method, args.batch)
            times.append(time.perf_counter() - start)
            peaks[depth or full] = (row.peak_bytes, row.first_step_peak_bytes)
        steps = [peaks[y][0] - peaks[x][0] for x, y in zip(args.depths, args.depths[1:])]
        off = [peaks[b][i] + (full - b) * (peaks[b][i] - peaks[a][i]) // (b - a) - peaks[full][i] for i in (0, 1)]
        print(
            f"{name}: trace s {' / '.join(f'{t:.1f}' for t in times)} (depths {args.depths}, then {full}); "
            f"increments {steps}; extrapolated - traced: steady {off[0]:+,} B, first step {off[1]:+,} B"
        )


if __name__ == "__main__":
    main()
