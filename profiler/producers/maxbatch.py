"""Largest batch that fits: exact (B fits, B+1 does not), in few probes, deterministic.

Peak memory is close to affine in the batch size, so after two fitting probes a line through
the last two predicts the answer; probing it and the next batch usually settles the search in
four probes. Bisection keeps the answer exact when the prediction misses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from contract.rows import Probe


@dataclass
class SearchResult:
    max_batch_size: int  # 0 when even batch 1 does not fit
    probes: list[Probe] = field(default_factory=list)
    capped: bool = False  # the answer is the spec's upper bound, not a measured limit


def search(
    probe: Callable[[int], Probe],
    limit_bytes: float | None,
    upper: int,
    known: dict[int, Probe] | None = None,
    on_probe: Callable[[int, int, int, int], None] | None = None,
) -> SearchResult:
    """The largest batch in [0, upper] that fits. `known`: probes already measured (a job's batch
    sweep), which start the bracket and the prediction, so the search begins near the answer; the
    answer is still confirmed by probing (B fits and B+1 does not, unless B is 0 or upper).
    `on_probe(n, batch, lo, hi)` is told before each new probe (n from 1)."""
    seen: dict[int, Probe] = {b: p for b, p in (known or {}).items() if 1 <= b <= upper}
    lo = max((b for b, p in seen.items() if p.fits), default=0)  # the largest known fit
    hi = min((b for b, p in seen.items() if not p.fits and b > lo), default=upper + 1)  # upper + 1: none yet
    guess, bisect_next = (_predict(seen, lo, hi, limit_bytes, upper) if lo else 1), False
    probes = 0
    while hi - lo > 1:
        result = seen.get(guess)
        if result is None:
            probes += 1
            if on_probe is not None:
                on_probe(probes, guess, lo, hi)
            result = probe(guess)
        seen[guess] = result
        width = hi - lo
        if result.fits:
            lo = guess
        else:
            hi = guess
        if hi - lo <= 1:
            break
        if bisect_next:
            guess, bisect_next = (lo + hi) // 2, False
        else:
            guess = _predict(seen, lo, hi, limit_bytes, upper)
            # a prediction that did not halve the interval is followed by a bisection step,
            # so a poor model of memory costs at most twice the probes of plain bisection
            bisect_next = hi <= upper and (hi - lo) * 2 > width
    return SearchResult(lo, [seen[b] for b in seen], capped=lo == upper)


def _predict(seen: dict[int, Probe], lo: int, hi: int, limit: float | None, upper: int) -> int:
    peaks = {b: p.peak_bytes for b, p in seen.items() if p.peak_bytes is not None}
    if limit is not None and lo in peaks and hi in peaks and peaks[hi] > peaks[lo]:
        # interpolate between the bracket's two measured peaks
        step = (limit - peaks[lo]) * (hi - lo) / (peaks[hi] - peaks[lo])
        return min(max(lo + int(step), lo + 1), hi - 1)
    fitting = sorted((b, m) for b, m in peaks.items() if b <= lo)
    if limit is not None and hi > upper and len(fitting) >= 2:
        (b0, m0), (b1, m1) = fitting[-2], fitting[-1]
        if m1 > m0:
            predicted = b1 + int((limit - m1) * (b1 - b0) / (m1 - m0))
            # small batches can sit on a plateau (optimizer-bound peak): grow at most 8x a step
            return min(max(predicted, lo + 1), 8 * lo, upper)
    if hi > upper:  # no failure seen yet: grow
        return min(max(2 * lo, lo + 1), upper)
    return (lo + hi) // 2
