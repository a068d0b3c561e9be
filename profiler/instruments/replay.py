"""A trace's memory accounting as an event log, and the peak it predicts at another batch size.

The storage tracker counts each storage an op creates until it is freed; the peak is the largest
running total. Traced at two batch sizes, a step makes the same storages in the same order (the
same ops run; only their shapes change), and each storage's size is affine in the batch, or
nearly (a sampled layer keeps ceil(ratio * tokens) rows). A log of the counting (allocate,
free, resize, each with the storage's bytes before rounding) at two batch sizes therefore
predicts every storage's size at a third, and replaying the log with those sizes, rounded as the
allocator rounds them, predicts the peak there: where in the step the peak falls may move with
the batch (from the backward's start to the optimizer step), and the replay follows it, where a
straight line through two peaks does not. The largest-batch search uses the prediction only to
choose what to trace next; an answer is always two traces (B fits, B+1 does not). Each event also
names its storage's category, and the first step's end is marked, so a replay gives what a trace's
row says of memory: both peaks and the breakdown at each (`Replay`), for the batch sweep's rows
between two traced batches (producers/sweep.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contract.rows import CATEGORIES

ALLOC, FREE, RESIZE, RESET, STEP = 0, 1, 2, 3, 4  # event kinds; RESET: the tracker's reset_peak; STEP: step 1 ended
OTHER = CATEGORIES.index("other")


@dataclass(frozen=True)
class Replay:
    """What a trace reports of memory: peaks as the tracker reports them (plus `fixed`), and the
    tracker's composition at each (the first moment it is reached), by category, without `fixed`."""

    peak: int
    first_step_peak: int | None  # None: the log has no first step's end
    breakdown: dict[str, int]
    first_step_breakdown: dict[str, int] | None


@dataclass(frozen=True, eq=False)
class EventLog:
    batch_size: int
    # numpy, not torch: a log is made inside a trace, where FakeTensorMode would make tensors fake
    kinds: np.ndarray  # int8 [n]
    gens: np.ndarray  # int64 [n]: the storage (its generation) an event is about; 0 for RESET
    sizes: np.ndarray  # int64 [n]: bytes before rounding (ALLOC, RESIZE); 0 otherwise
    prev: np.ndarray  # int64 [n]: for FREE and RESIZE, the event that last set the storage's size; else -1
    block: int  # the tracker's rounding
    fixed: int  # bytes the reported peak holds beyond the tracker's (an estimate's workspaces)
    reset: int  # index of the last RESET, -1 when none
    cats: np.ndarray  # int8 [n]: the category (index in CATEGORIES) of the storage an event is about
    step: int  # index of the STEP mark (the first step's end), -1 when none
    first_cats: np.ndarray  # int8 [n]: the categories as known at the first step's end

    @classmethod
    def of(
        cls,
        batch_size: int,
        kinds: Sequence[int],
        gens: Sequence[int],
        sizes: Sequence[int],
        block: int,
        fixed: int,
        category: dict[int, int] | None = None,
        first_category: dict[int, int] | None = None,
    ) -> EventLog:
        """`category`: generation -> index in CATEGORIES (default and where missing: other), at the
        log's end; `first_category`: the same at the first step's end (default: `category`)."""
        prev, last, reset, step = [-1] * len(kinds), {}, -1, -1
        category = category or {}
        for i, (kind, gen) in enumerate(zip(kinds, gens)):
            if kind == RESET:
                reset = i
                continue
            if kind == STEP:
                step = i
                continue
            if kind != ALLOC:
                prev[i] = last[gen]
            if kind == FREE:
                del last[gen]
            else:
                last[gen] = i
        cats = np.array([category.get(gen, OTHER) for gen in gens], dtype=np.int8)
        first = cats if first_category is None else np.array([first_category.get(g, OTHER) for g in gens], np.int8)
        return cls(
            batch_size, np.array(kinds, dtype=np.int8), np.array(gens, dtype=np.int64),
            np.array(sizes, dtype=np.int64), np.array(prev, dtype=np.int64), block, fixed, reset, cats, step, first,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.kinds)

    def same_steps(self, other: EventLog) -> bool:
        """Whether both logs count the same storages in the same order (only sizes differ)."""
        return (
            len(self) == len(other)
            and self.block == other.block
            and self.fixed == other.fixed
            and self.reset == other.reset
            and self.step == other.step
            and np.array_equal(self.kinds, other.kinds)
            and np.array_equal(self.gens, other.gens)
            and np.array_equal(self.cats, other.cats)
            and np.array_equal(self.first_cats, other.first_cats)
        )

    def _counted(self, sizes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(each event's size rounded, the tracker's running total after each event)."""
        raw = self.sizes if sizes is None else sizes
        rounded = (raw + self.block - 1) // self.block * self.block
        before = np.where(self.prev >= 0, rounded[np.maximum(self.prev, 0)], 0)
        delta = np.where(self.kinds == ALLOC, rounded, 0)
        delta = np.where(self.kinds == FREE, -before, delta)
        delta = np.where(self.kinds == RESIZE, rounded - before, delta)
        return rounded, np.cumsum(delta)

    def _top(self, current: np.ndarray, end: int) -> tuple[int, int]:
        """(the peak up to event `end`, inclusive, as the tracker counts it; the first event at it)."""
        start = max(self.reset, 0)  # the RESET's own total is the peak's starting point
        if end < start:
            return 0, -1
        at = start + int(np.argmax(current[start : end + 1]))
        top = int(current[at])
        return (top, at) if self.reset >= 0 or top > 0 else (0, -1)

    def peak(self, sizes: np.ndarray | None = None) -> int:
        """The peak the tracker reports (plus `fixed`) with these sizes before rounding (default:
        the log's own, which gives the traced peak to the byte)."""
        _, current = self._counted(sizes)
        return self._top(current, len(current) - 1)[0] + self.fixed

    def replay(self, sizes: np.ndarray | None = None) -> Replay:
        """Both peaks and their breakdowns with these sizes (default: the log's own: the trace's)."""
        rounded, current = self._counted(sizes)
        # the event after which a storage's size (set by this event) no longer holds: its next
        # resize or its free (len: never, within the log)
        following = np.full(len(self), len(self), dtype=np.int64)
        later = np.nonzero(self.prev >= 0)[0]
        following[self.prev[later]] = later
        sets = (self.kinds == ALLOC) | (self.kinds == RESIZE)

        def composition(at: int, cats: np.ndarray) -> dict[str, int]:
            live = sets & (np.arange(len(self)) <= at) & (following > at)
            totals = np.bincount(cats[live], weights=rounded[live], minlength=len(CATEGORIES))
            return {name: int(totals[i]) for i, name in enumerate(CATEGORIES)}

        peak, at = self._top(current, len(current) - 1)
        first = first_at = None
        if self.step >= 0:
            first, first_at = self._top(current, self.step)
        return Replay(
            peak=peak + self.fixed,
            first_step_peak=None if first is None else first + self.fixed,
            breakdown=composition(at, self.cats),
            first_step_breakdown=None if first_at is None else composition(first_at, self.first_cats),
        )


def _sizes(a: EventLog, b: EventLog):
    """batch -> every event's predicted size before rounding, from logs at two batch sizes that
    count the same storages; None when they do not."""
    if a.batch_size == b.batch_size or not a.same_steps(b):
        return None
    slope = (b.sizes - a.sizes) / (b.batch_size - a.batch_size)

    def sizes_at(batch: int) -> np.ndarray:
        raw = a.sizes + slope * (batch - a.batch_size)
        # a size exact in the batch comes out within rounding of an integer: no byte added to it
        return np.maximum(np.ceil(raw - 1e-6), 0).astype(np.int64)

    return sizes_at


def predictor(a: EventLog, b: EventLog):
    """batch -> predicted peak (bytes, as the tracker reports it), from logs at two batch sizes
    that count the same storages; None when they do not."""
    sizes_at = _sizes(a, b)
    return None if sizes_at is None else lambda batch: a.peak(sizes_at(batch))


def replayer(a: EventLog, b: EventLog):
    """batch -> predicted Replay (both peaks, both breakdowns), as `predictor`; None likewise."""
    sizes_at = _sizes(a, b)
    return None if sizes_at is None else lambda batch: a.replay(sizes_at(batch))
