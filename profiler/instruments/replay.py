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
choose what to trace next; an answer is always two traces (B fits, B+1 does not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALLOC, FREE, RESIZE, RESET = 0, 1, 2, 3  # event kinds; RESET: the tracker's reset_peak


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

    @classmethod
    def of(
        cls, batch_size: int, kinds: Sequence[int], gens: Sequence[int], sizes: Sequence[int], block: int, fixed: int
    ) -> EventLog:
        prev, last, reset = [-1] * len(kinds), {}, -1
        for i, (kind, gen) in enumerate(zip(kinds, gens)):
            if kind == RESET:
                reset = i
                continue
            if kind != ALLOC:
                prev[i] = last[gen]
            if kind == FREE:
                del last[gen]
            else:
                last[gen] = i
        return cls(
            batch_size, np.array(kinds, dtype=np.int8), np.array(gens, dtype=np.int64),
            np.array(sizes, dtype=np.int64), np.array(prev, dtype=np.int64), block, fixed, reset,
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
            and np.array_equal(self.kinds, other.kinds)
            and np.array_equal(self.gens, other.gens)
        )

    def peak(self, sizes: np.ndarray | None = None) -> int:
        """The peak the tracker reports (plus `fixed`) with these sizes before rounding (default:
        the log's own, which gives the traced peak to the byte)."""
        raw = self.sizes if sizes is None else sizes
        rounded = (raw + self.block - 1) // self.block * self.block
        before = np.where(self.prev >= 0, rounded[np.maximum(self.prev, 0)], 0)
        delta = np.where(self.kinds == ALLOC, rounded, 0)
        delta = np.where(self.kinds == FREE, -before, delta)
        delta = np.where(self.kinds == RESIZE, rounded - before, delta)
        current = np.cumsum(delta)
        if self.reset < 0:
            top = int(current.max()) if len(current) else 0
            return max(top, 0) + self.fixed
        after = current[self.reset :]  # the RESET's own total is the peak's starting point
        return int(after.max()) + self.fixed


def predictor(a: EventLog, b: EventLog):
    """batch -> predicted peak (bytes, as the tracker reports it), from logs at two batch sizes
    that count the same storages; None when they do not."""
    if a.batch_size == b.batch_size or not a.same_steps(b):
        return None
    slope = (b.sizes - a.sizes) / (b.batch_size - a.batch_size)

    def peak_at(batch: int) -> int:
        raw = a.sizes + slope * (batch - a.batch_size)
        # a size exact in the batch comes out within rounding of an integer: no byte added to it
        return a.peak(np.maximum(np.ceil(raw - 1e-6), 0).astype(np.int64))

    return peak_at
