"""Does a repeated block pay, part by part? An experiment for issue 26 (nothing in the profiler uses
it): each trace's event log is cut at marks (a block's forward starts; a block's output gets its
gradient, i.e. its backward starts; the optimizer's step starts and ends; the first step ends), and
the peak inside every part is fitted
as affine in the depth n and, for the blocks between the first and the last, in the block's index
i. Fitted on traces at depths 3, 4 and 5 (every fit must hold there to the byte), each part is
extrapolated to the full depth and the largest taken: compared with the full-depth trace, steady
and first-step peaks. benchmarks/depth_extrapolation.py shows why a line through whole peaks fails
(the moment holding the peak moves with the depth); this checks whether following every moment
fixes that.

Usage: python benchmarks/depth_parts.py [--model t5-large] [--methods ...] [--batch 100] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter, defaultdict
from fractions import Fraction

import numpy as np
import torch
from common import machine
from depth_extrapolation import at_depth, full_depth

from contract.methods import parse_method
from contract.presets import PRESETS
from contract.spec import JobSpec
from profiler.instruments import tracker as tracker_mod
from profiler.instruments.replay import EventLog
from profiler.producers import single
from profiler.trial import mode as mode_mod

DEPTHS = (3, 4, 5)
_state: dict = {}


def _instrument() -> None:
    """Keep the tracker and its raw log; mark the blocks of every model built."""
    real_init, real_log, real_build = (
        tracker_mod.StorageTracker.__init__,
        tracker_mod.StorageTracker.event_log,
        mode_mod.build_trial,
    )

    def init(self, *a, **k):
        real_init(self, *a, **k)
        _state["tracker"], _state["marks"] = self, []

    def event_log(self, fixed=0):
        _state["raw"] = [list(c) for c in self._events] if self._events is not None else None
        _state["fixed"] = fixed
        return real_log(self, fixed)

    def mark(kind, stack, i):
        t = _state.get("tracker")
        if t is not None and t._events is not None:
            _state["marks"].append((len(t._events[0]), kind, stack, i))

    def build(spec, method, batch_size, device, fake, kernels):
        trial = real_build(spec, method, batch_size, device, fake, kernels)
        depth = _state["depth"]
        # the stacks of blocks: ModuleLists of `depth` blocks (a T5 block's own ModuleList of sublayers is not one)
        names = set(getattr(trial.model, "_no_split_modules", None) or [])

        def is_block(m) -> bool:
            kind = type(m).__name__
            return kind in names if names else kind.endswith(("Layer", "Block"))

        lists = (m for m in trial.model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == depth)
        stacks = [m for m in lists if all(is_block(b) for b in m)]
        for s, blocks in enumerate(stacks):
            for i, block in enumerate(blocks):

                def pre(module, args, s=s, i=i):
                    mark("F", s, i)

                def post(module, args, out, s=s, i=i):
                    first = out[0] if isinstance(out, tuple) else out
                    if isinstance(first, torch.Tensor) and first.requires_grad:
                        first.register_hook(lambda grad, s=s, i=i: mark("B", s, i))

                block.register_forward_pre_hook(pre)
                block.register_forward_hook(post)
        # the optimizer's step is a part of its own: its temporaries span every block
        trial.optimizer.register_step_pre_hook(lambda *a: mark("O", -1, -1))
        trial.optimizer.register_step_post_hook(lambda *a: mark("P", -1, -1))
        return trial

    tracker_mod.StorageTracker.__init__, tracker_mod.StorageTracker.event_log = init, event_log
    mode_mod.build_trial = build


def _parts(depth: int) -> tuple[dict, int, int]:
    """part label -> [(i, peak inside)], and the traced steady and first-step peaks."""
    kinds, gens, sizes = _state["raw"]
    log = EventLog.of(0, kinds, gens, sizes, block=_state["tracker"].block, fixed=_state["fixed"])
    _, current = log._counted(None)
    cuts = [(pos, kind, s, i) for pos, kind, s, i in _state["marks"]]
    cuts += [(log.reset + 1, "RESET", -1, -1), (log.step + 1, "STEP", -1, -1)]
    cuts.sort(key=lambda c: c[0])
    seen: Counter = Counter()
    out: dict = defaultdict(list)
    for (pos, kind, s, i), nxt in zip(cuts, [c[0] for c in cuts[1:]] + [len(current)]):
        start, end = max(pos, log.reset + 1), nxt
        seen[kind, s, i] += 1
        if end <= start:
            continue
        where = "none" if i < 0 else "first" if i == 0 else "last" if i == depth - 1 else "middle"
        label = (kind, s, seen[kind, s, i], where, pos <= log.step)
        out[label].append((i, int(current[start:end].max())))
    return out, log.peak(), log.replay().first_step_peak


def _fit(points: list[tuple[int, int, int]], with_index: bool):
    """value = a + b*n (+ c*i), exactly through every point (n, i, value); None if none does."""
    rows = [[1, n, i] if with_index else [1, n] for n, i, _ in points]
    a = np.array(rows, dtype=float)
    y = np.array([v for _, _, v in points], dtype=float)
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    exact = [Fraction(round(c * 2)) / 2 for c in coef]  # sizes are integers; half-steps for safety
    for row, (_, _, v) in zip(rows, points):
        if sum(c * x for c, x in zip(exact, row)) != v:
            return None
    return exact


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="t5-large", choices=sorted(PRESETS))
    ap.add_argument("--methods", nargs="+", default=["full", "lora", "checkpointing", "wtacrs@0.3"])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args()
    os.environ["WTACRS_TRACE_CACHE"] = "off"
    _instrument()
    full = full_depth(args.model, args.seq_len)
    print(f"{machine()}; {args.model} ({full} blocks), batch {args.batch}, length {args.seq_len}, estimate")

    def spec(depth: int) -> JobSpec:
        return at_depth(args.model, depth, args.batch, args.seq_len)

    for name in args.methods:
        method, by_depth, traced, spent = parse_method(name), {}, {}, {}
        for depth in (*DEPTHS, full):
            _state["depth"] = depth
            start = time.perf_counter()
            row = single.trial_row(spec(depth), method, args.batch, throughput=False, logs={})
            spent[depth] = time.perf_counter() - start
            parts, peak, first = _parts(depth)
            assert (peak, first) == (row.peak_bytes, row.first_step_peak_bytes), (name, depth)
            by_depth[depth], traced[depth] = parts, (peak, first)
        labels = set(by_depth[DEPTHS[0]])
        if any(set(by_depth[d]) != labels for d in DEPTHS):
            print(f"{name}: the parts differ between depths {DEPTHS}: not extrapolated")
            continue
        steady = first_step = 0
        failed = []
        for label in labels:
            where, in_first = label[3], label[4]
            points = [(d, i, v) for d in DEPTHS for i, v in by_depth[d][label]]
            fit = _fit(points, with_index=where == "middle")
            if fit is None:
                failed.append(label)
                continue
            ends = {"first": [0], "last": [full - 1], "middle": [1, full - 2], "none": [0]}[where]
            top = max(fit[0] + fit[1] * full + (fit[2] * i if where == "middle" else 0) for i in ends)
            steady = max(steady, top)
            if in_first:
                first_step = max(first_step, top)
        fixed = _state["fixed"]
        peak, first = traced[full]
        cost = " / ".join(f"{spent[d]:.1f}" for d in (*DEPTHS, full))
        if failed:
            values = {d: by_depth[d][failed[0]] for d in DEPTHS}
            print(f"{name}: trace s {cost}; {len(failed)} of {len(labels)} parts not affine: {failed[0]} {values}")
            continue
        print(
            f"{name}: trace s {cost} (depths {DEPTHS}, then {full}); {len(labels)} parts; extrapolated - traced: "
            f"steady {int(steady) + fixed - peak:+,} B, first step {int(first_step) + fixed - first:+,} B"
        )


if __name__ == "__main__":
    main()
