"""`compile: true`: the trials run the step's model under torch.compile, compiled in warm-up steps
before anything is measured, and nothing compiled for one trial outlives it.

The backend is aot_eager here (WTACRS_COMPILE_BACKEND): inductor's kernel generation takes minutes
on two cores; the graphs, the recompiles and the compiled autograd are the same."""

import gc

import pytest
import torch

from contract.methods import parse_method
from contract.spec import JobSpec
from profiler import measure, trials
from profiler.runner import run_job
from tests.profiler.test_maxbatch import track_built_models

SPEC = {
    "model": "llama-tiny",
    "methods": ["full", "wtacrs@0.3"],
    "seq_len": 32,
    "batch_sizes": [4],
    "device": "cpu",
    "steps": 2,
    "warmup": 1,
    "measurements": ["peak_memory", "throughput"],
}


@pytest.fixture(autouse=True)
def aot_eager(monkeypatch):
    monkeypatch.setenv(measure.COMPILE_BACKEND_ENV, "aot_eager")


def _rows(**kw):
    result = run_job(JobSpec.model_validate({**SPEC, **kw}), isolate=False)
    assert result.status == "succeeded", result.errors
    return {r.method: r for r in result.results}


def test_a_compiled_job_measures_the_compiled_step():
    compiled, eager = _rows(compile=True), _rows()
    for method, row in compiled.items():
        assert row.compiled and row.compile_backend == "aot_eager" and row.compile_s > 0
        # LLaMA compiles whole, in one graph; WTA-CRS once more, in the second warm-up step, for the
        # gradient-norm tables its first step created
        assert row.compile_graphs == (1 if method == "full" else 2)
        assert row.recompiles_measured == 0  # nothing compiled while memory and time were measured
        assert 0 < row.first_step_peak_bytes <= row.peak_bytes and row.step_time_s > 0 and row.timed_steps == 2
        # aot_eager runs eager's kernels: what the compiled step keeps is what eager keeps, give or take
        # what AOTAutograd's partitioner recomputes instead of saving
        reference = eager[method]
        assert not reference.compiled and reference.compile_s is None
        assert row.activation_bytes == pytest.approx(reference.activation_bytes, rel=0.1)
        assert row.first_step_peak_bytes == pytest.approx(reference.first_step_peak_bytes, rel=0.1)
    assert compiled["wtacrs@0.3"].activation_bytes < compiled["full"].activation_bytes


def test_a_failed_compiled_trial_leaves_nothing_alive(monkeypatch):
    """The max-batch search's rule, compiled: after an OOM in a compiled probe, neither the model
    nor its compiled graphs survive the row (Dynamo's caches would otherwise hold them)."""
    spec = JobSpec.model_validate({**SPEC, "compile": True, "measurements": ["peak_memory"]})
    models = track_built_models(monkeypatch)

    def out_of_memory(trial, mode):
        trial.forward_backward()  # the compiled step ran, holding graphs and a step's tensors
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trials, "measure_memory", out_of_memory)
    row = trials.trial_row(spec, parse_method("wtacrs@0.3"), 4)
    assert row.oom and row.compiled and row.oom_message.startswith("CUDA out of memory")
    gc.collect()
    assert models and all(ref() is None for ref in models), "the failed probe's model is still alive"


def test_each_trial_compiles_afresh(monkeypatch):
    """Graphs compiled for one trial are dropped after it: with Dynamo's recompile limit at 1, a
    second batch size would otherwise find the limit reached and run eagerly (a max-batch search
    probes more batch sizes than the default limit of 8)."""
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    spec = JobSpec.model_validate({**SPEC, "compile": True, "measurements": ["peak_memory"], "methods": ["full"]})
    for batch in (2, 3):
        row = trials.trial_row(spec, parse_method("full"), batch)
        assert row.error is None and row.compile_graphs == 1 and row.recompiles_measured == 0
