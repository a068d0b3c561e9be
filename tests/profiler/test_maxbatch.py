import math

import pytest

from profiler.maxbatch import Probe, search


def affine(base, per_sample, limit, noise=None, measured_over=True):
    """measured_over: the peak of a batch that does not fit is known (estimate) or not (a real OOM)."""
    calls = []

    def probe(b):
        calls.append(b)
        peak = base + per_sample * b + (noise(b) if noise else 0)
        return Probe(b, peak <= limit, peak if peak <= limit or measured_over else None)

    return probe, calls


@pytest.mark.parametrize("measured_over", [True, False])
@pytest.mark.parametrize("answer", [1, 2, 3, 7, 64, 100, 1000, 4095])
def test_exact_answer_in_few_probes(answer, measured_over):
    per, base = 10_000, 123_456
    limit = base + per * answer + per // 2
    probe, calls = affine(base, per, limit, measured_over=measured_over)
    result = search(probe, limit, upper=100_000)
    assert result.max_batch_size == answer
    assert len(calls) <= math.log2(answer) + 3, calls
    assert len(set(calls)) == len(calls)


def test_nonlinear_memory_still_exact():
    limit = 10_000_000
    probe, calls = affine(1_000_000, 20_000, limit, noise=lambda b: 30 * b * b)
    result = search(probe, limit, upper=100_000)
    fits = lambda b: 1_000_000 + 20_000 * b + 30 * b * b <= limit
    assert fits(result.max_batch_size) and not fits(result.max_batch_size + 1)
    assert search(affine(1_000_000, 20_000, limit, noise=lambda b: 30 * b * b)[0], limit, 100_000).max_batch_size == (
        result.max_batch_size
    )


def test_no_limit_known_uses_doubling_then_bisection():
    probe, calls = affine(0, 1, 37)
    assert search(probe, None, upper=1000).max_batch_size == 37


def test_nothing_fits_and_upper_cap():
    probe, _ = affine(100, 10, 50)
    assert search(probe, 50, upper=100).max_batch_size == 0
    probe, _ = affine(0, 1, 10**9)
    result = search(probe, 10**9, upper=64)
    assert result.max_batch_size == 64 and result.capped


def test_plateau_at_small_batches_does_not_degrade_to_a_linear_scan():
    # optimizer-bound peak: flat up to 64, then activations dominate
    limit = 5_000_000
    probe, calls = affine(0, 1, limit, noise=lambda b: max(3_000_000, 2_000_000 + 1_000 * b) - b)
    result = search(probe, limit, upper=100_000)
    assert result.max_batch_size == 3000
    assert len(calls) <= (3000).bit_length() + 3, calls
