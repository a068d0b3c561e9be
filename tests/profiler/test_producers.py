"""The measurement registry's profiler half: every measurement has a producer, and a job asking for
memory_attribution gets typed attribution rows through the runner, as the worker would post them."""

from contract.measurements import MEASUREMENTS
from contract.spec import JobSpec
from profiler.producers.registry import PRODUCERS, producers_for
from profiler.runner import run_job, units_per_method


def test_every_measurement_has_a_producer():
    assert PRODUCERS.keys() == MEASUREMENTS.keys()


def test_trial_rows_run_once_for_peak_memory_and_throughput():
    spec = JobSpec.model_validate(
        {"model": "bert-tiny", "methods": ["full"], "seq_len": 8, "batch_sizes": [1, 2], "device": "cpu"}
    )
    assert [field for field, _ in producers_for(spec)] == ["results"]
    assert units_per_method(spec, "full") == 2


def test_memory_attribution_through_the_runner():
    spec = JobSpec.model_validate(
        {
            "model": "llama-tiny",
            "methods": ["full", "wtacrs@0.3"],
            "seq_len": 16,
            "batch_sizes": [2, 4],
            "measurements": ["peak_memory", "memory_attribution"],
            "device": "estimate",
        }
    )
    result = run_job(spec, isolate=False)
    assert result.status == "succeeded", result.errors
    full, sampled = result.attribution
    trials = {(r.method, r.batch_size): r for r in result.results}
    for row in (full, sampled):
        assert row.batch_size == 4 and row.mode == "estimate" and row.estimate_device == "cuda-sm90"
        assert row.raw_bytes == trials[(row.method, 4)].activation_bytes  # the same saved bytes, by module
        assert sum(m.bytes for m in row.modules) == row.total_bytes
    assert sampled.total_bytes < full.total_bytes
    assert any(op.startswith("wtacrs") for op in sampled.ops) and not any(op.startswith("wtacrs") for op in full.ops)
