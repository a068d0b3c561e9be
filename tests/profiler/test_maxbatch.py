import math
import weakref

import pytest

from profiler.producers.maxbatch import Probe, search


def affine(base, per_sample, limit, noise=None, measured_over=True):
    """measured_over: the peak of a batch that does not fit is known (estimate) or not (a real OOM)."""
    calls = []

    def probe(b):
        calls.append(b)
        peak = base + per_sample * b + (noise(b) if noise else 0)
        return Probe(batch_size=b, fits=peak <= limit, peak_bytes=peak if peak <= limit or measured_over else None)

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


class _DeviceLimit:
    """A device that runs out: a dispatch-level count of live bytes created during a trial,
    raising torch.OutOfMemoryError (from inside forward/backward, as CUDA does) past `limit`."""

    def __init__(self, limit):
        self.limit, self.high = limit, 0

    def wrap(self, measure):
        import torch

        from profiler.instruments.tracker import StorageTracker

        device = self

        class Limited(StorageTracker):
            def track(self, t):
                ident = super().track(t)
                device.high = max(device.high, self.current)
                if self.current > device.limit:
                    raise torch.OutOfMemoryError(f"tried to hold {self.current} bytes of {device.limit}")
                return ident

        def measured(trial, mode, **kw):
            with Limited():
                return measure(trial, mode, **kw)

        return measured


def test_search_stays_exact_after_real_ooms(monkeypatch):
    """OOMs mid-search (the H100 bug: after the first one every probe failed) must not poison the
    next probe: the answer is the largest batch that fits alone, the same twice, and nothing of a
    failed probe is alive once it has returned."""
    import gc

    from contract.methods import parse_method
    from contract.spec import JobSpec
    from profiler.producers import single, trials
    from profiler.trial import measure, mode

    spec = JobSpec.model_validate(
        {
            "model": "bert-tiny",
            "methods": ["full"],
            "seq_len": 32,
            "batch_sizes": [1],
            "measurements": ["max_batch_size"],
            "device": "cpu",
            "target_memory_gb": 1000,  # the host limit never binds: only the device's OOMs do
            "max_batch": {"upper": 4096},
        }
    )
    method = parse_method("full")
    sizing = _DeviceLimit(float("inf"))
    monkeypatch.setattr(single, "measure_memory", sizing.wrap(measure.measure_memory))
    trials.trial_row(spec, method, 24, throughput=False)
    device = _DeviceLimit(sizing.high)  # batch 24 is right at the limit
    monkeypatch.setattr(single, "measure_memory", device.wrap(measure.measure_memory))

    models = track_built_models(monkeypatch)
    leaks = []

    def checked_free():  # the cache is handed back only once the failed trial is unreachable
        gc.collect()
        leaks.extend(m for m in models if m() is not None)

    monkeypatch.setattr(mode, "free_cached", checked_free)

    def fits_alone(b):
        return not trials.trial_row(spec, method, b, throughput=False).oom

    first = trials.max_batch_row(spec, method).model_dump()
    assert models and not leaks, "a probe's model was still alive when its memory was handed back"
    second = trials.max_batch_row(spec, method).model_dump()
    answer = first["max_batch_size"]
    failed = [p for p in first["probes"] if not p["fits"]]
    assert len(failed) >= 2, first["probes"]  # the search went on after OOMs
    assert all(p["reason"].startswith("out of memory") for p in failed)
    assert 1 < answer < 4096 and not first["capped_at_upper"]
    assert fits_alone(answer) and not fits_alone(answer + 1)
    assert second["max_batch_size"] == answer


def track_built_models(monkeypatch) -> list[weakref.ref]:
    """Weak references to the model of every trial built from now on (to check none outlives its row)."""
    from profiler.trial import mode

    models = []
    build = mode.build_trial

    def tracked_build(*args, **kwargs):
        trial = build(*args, **kwargs)
        models.append(weakref.ref(trial.model))
        return trial

    monkeypatch.setattr(mode, "build_trial", tracked_build)
    return models


@pytest.mark.parametrize("answer", [1, 37, 4000])
def test_a_right_peak_model_settles_the_search_in_two_probes(answer):
    """Convex memory (the peak's moment moves with the batch), where interpolation needs several
    probes: a model that predicts it is probed at its answer and the next batch, nothing else."""

    def peak(b):
        return max(2_000_000 + 1_000 * b, 500_000 + 3_000 * b)

    answer_limit = peak(answer) + (peak(answer + 1) - peak(answer)) // 2
    calls = []

    def probe(b):
        calls.append(b)
        return Probe(batch_size=b, fits=peak(b) <= answer_limit, peak_bytes=peak(b))

    known = {1: Probe(batch_size=1, fits=peak(1) <= answer_limit, peak_bytes=peak(1))}
    result = search(probe, answer_limit, 100_000, known, peak_model=lambda lo, hi: peak)
    assert result.max_batch_size == answer
    assert calls == ([answer, answer + 1] if answer > 1 else [2])


@pytest.mark.parametrize("error", [-0.2, -0.01, 0.01, 0.3])
def test_a_wrong_peak_model_still_gives_the_exact_answer(error):
    """A model off by a few percent (either way) costs probes, never the answer."""
    per, base, answer = 10_000, 123_456, 777
    limit = base + per * answer + per // 2
    probe, calls = affine(base, per, limit)
    wrong = lambda b: int((base + per * b) * (1 + error))  # noqa: E731
    result = search(probe, limit, 100_000, {1: probe(1)}, peak_model=lambda lo, hi: wrong)
    assert result.max_batch_size == answer
    assert len(calls) <= 2 * math.log2(100_000) + 3, calls
