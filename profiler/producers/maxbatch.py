"""Largest batch that fits: exact (B fits, B+1 does not), in few probes, deterministic.

Peak memory is close to affine in the batch size, so after two fitting probes a line through
the last two predicts the answer; probing it and the next batch usually settles the search in
four probes. A line through two peaks misses where the peak's moment moves with the batch; an
estimate's traces give a better model (`peak_model`: every storage's size predicted and the step
replayed, instruments/replay.py), whose answer is probed, then the next batch: two probes when it
is right. Bisection keeps the answer exact when a prediction misses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from contract.rows import Probe

PeakModel = Callable[[int, int], Callable[[int], int] | None]  # (lo, hi) -> (batch -> peak bytes) or None


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
    peak_model: PeakModel | None = None,
) -> SearchResult:
    """The largest batch in [0, upper] that fits. `known`: probes already measured (a job's batch
    sweep), which start the bracket and the prediction, so the search begins near the answer; the
    answer is still confirmed by probing (B fits and B+1 does not, unless B is 0 or upper).
    `on_probe(n, batch, lo, hi)` is told before each new probe (n from 1). `peak_model(lo, hi)`:
    a prediction of the peak at any batch, from what has been probed so far, or None."""
    seen: dict[int, Probe] = {b: p for b, p in (known or {}).items() if 1 <= b <= upper}
    lo = max((b for b, p in seen.items() if p.fits), default=0)  # the largest known fit
    hi = min((b for b, p in seen.items() if not p.fits and b > lo), default=upper + 1)  # upper + 1: none yet
    guess, bisect_next = (_predict(seen, lo, hi, limit_bytes, upper) if lo else 1), False
    expect = None  # what the peak model said of `guess` (fits or not); None: the guess is not the model's
    probes = 0
    while hi - lo > 1:
        if not bisect_next and limit_bytes is not None and peak_model is not None:
            model = peak_model(lo, hi)
            if model is not None:
                guess, expect = _model_guess(model, lo, hi, limit_bytes, upper)
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
        if expect is not None:
            # the model's guess: trusted again while it is right, a bisection step after a miss
            bisect_next, expect = expect != result.fits, None
            guess = (lo + hi) // 2
        elif bisect_next:
            guess, bisect_next = (lo + hi) // 2, False
        else:
            guess = _predict(seen, lo, hi, limit_bytes, upper)
            # a prediction that did not halve the interval is followed by a bisection step,
            # so a poor model of memory costs at most twice the probes of plain bisection
            bisect_next = hi <= upper and (hi - lo) * 2 > width
    return SearchResult(lo, [seen[b] for b in seen], capped=lo == upper)


def _model_guess(peak_at: Callable[[int], int], lo: int, hi: int, limit: float, upper: int) -> tuple[int, bool]:
    """(batch to probe, whether the model says it fits): its answer, the largest batch in (lo, hi)
    it says fits, or lo + 1 when it says none does (that probe then confirms lo)."""
    a, b = lo, min(hi - 1, upper)  # the model's answer lies in [a, b]
    if peak_at(b) <= limit:
        a = b
    while b - a > 1:  # peak_at(b) > limit; a fits (probed, or by the model)
        mid = (a + b) // 2
        if peak_at(mid) <= limit:
            a = mid
        else:
            b = mid
    return (a, True) if a > lo else (lo + 1, False)


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
