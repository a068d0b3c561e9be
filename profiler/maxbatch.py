"""Largest batch that fits: exact (B fits, B+1 does not), in few probes, deterministic.

Peak memory is close to affine in the batch size, so after two fitting probes a line through
the last two predicts the answer; probing it and the next batch usually settles the search in
four probes. Bisection keeps the answer exact when the prediction misses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Probe:
    batch_size: int
    fits: bool
    peak_bytes: int | None  # None when the probe ran out of memory
    reason: str = ""


@dataclass
class SearchResult:
    max_batch_size: int  # 0 when even batch 1 does not fit
    probes: list[Probe] = field(default_factory=list)
    capped: bool = False  # the answer is the spec's upper bound, not a measured limit


def search(probe: Callable[[int], Probe], limit_bytes: float | None, upper: int) -> SearchResult:
    seen: dict[int, Probe] = {}
    lo, hi = 0, upper + 1  # lo: largest known fit; hi: smallest known failure (upper + 1: none yet)
    guess = 1
    while hi - lo > 1:
        result = seen.get(guess) or probe(guess)
        seen[guess] = result
        if result.fits:
            lo = guess
        else:
            hi = guess
        if hi - lo <= 1:
            break
        guess = _next_guess(seen, lo, hi, limit_bytes, upper)
    return SearchResult(lo, [seen[b] for b in seen], capped=lo == upper)


def _next_guess(seen: dict[int, Probe], lo: int, hi: int, limit: float | None, upper: int) -> int:
    fitting = sorted((b, p.peak_bytes) for b, p in seen.items() if p.fits and p.peak_bytes is not None)
    if limit is not None and len(fitting) >= 2:
        (b0, m0), (b1, m1) = fitting[-2], fitting[-1]
        slope = (m1 - m0) / (b1 - b0)
        if slope > 0:
            predicted = b1 + int((limit - m1) // slope)
            # probe the predicted answer, or just above the largest fit to confirm it
            return min(max(predicted, lo + 1), hi - 1)
    if hi > upper:  # no failure seen yet: grow
        return min(max(2 * lo, lo + 1), upper)
    return (lo + hi) // 2
