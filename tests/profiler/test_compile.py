"""`compile: true`: the trials run the step's model under torch.compile, compiled in warm-up steps
before anything is measured, and nothing compiled for one trial outlives it.

The backend is aot_eager here (WTACRS_COMPILE_BACKEND): inductor's kernel generation takes minutes
on two cores; the graphs, the recompiles and the compiled autograd are the same."""

import collections
import gc

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from contract.methods import parse_method
from contract.spec import JobSpec
from profiler.producers import single, trials
from profiler.runner import run_job
from profiler.trial import compiled as compiled_steps
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


GRAPH_CALLS = collections.Counter()  # calls of the compiled forward and backward graphs


def _counted(gm, example_inputs):
    def run(*args):
        GRAPH_CALLS["calls"] += 1
        return gm(*args)

    return make_boxed_func(run)


# aot_eager (the graphs AOTAutograd makes, run by eager kernels) that counts the graphs' calls
torch._dynamo.register_backend(aot_autograd(fw_compiler=_counted, bw_compiler=_counted), name="counted_aot_eager")


@pytest.fixture(autouse=True)
def aot_eager(monkeypatch):
    monkeypatch.setenv(compiled_steps.COMPILE_BACKEND_ENV, "aot_eager")


def _rows(**kw):
    result = run_job(JobSpec.model_validate({**SPEC, **kw}), isolate=False)
    assert result.status == "succeeded", result.errors
    return {r.method: r for r in result.results}


def test_a_compiled_job_measures_the_compiled_step(monkeypatch):
    monkeypatch.setenv(compiled_steps.COMPILE_BACKEND_ENV, "counted_aot_eager")
    graph_calls = []  # (measurement, compiled graph calls while it ran)

    def counting(measure):
        def run(*args):
            before = GRAPH_CALLS["calls"]
            out = measure(*args)
            graph_calls.append((measure.__name__, GRAPH_CALLS["calls"] - before))
            return out

        return run

    monkeypatch.setattr(single, "measure_compiled_memory", counting(single.measure_compiled_memory))
    monkeypatch.setattr(single, "measure_throughput", counting(single.measure_throughput))
    compiled = _rows(compile=True)
    # every measured step ran the compiled graphs, forward and backward: memory's 2 steps, then
    # throughput's 1 warm-up and 2 timed ones (a storage tracker's dispatch mode once made Dynamo
    # run them all eagerly: 0 calls, and eager numbers in compiled rows)
    per_method = [("measure_compiled_memory", 2 * 2), ("measure_throughput", 3 * 2)]
    assert graph_calls == per_method * 2
    monkeypatch.undo()
    eager = _rows()
    for method, row in compiled.items():
        assert row.compiled and row.compile_backend == "counted_aot_eager" and row.compile_s > 0
        # LLaMA compiles whole, in one graph; WTA-CRS once more, in the second warm-up step, for the
        # gradient-norm tables its first step created
        assert row.compile_graphs == (1 if method == "full" else 2) and row.compile_graph_breaks == 0
        assert row.recompiles_measured == 0  # nothing compiled while memory and time were measured
        assert 0 < row.first_step_peak_bytes <= row.peak_bytes and row.step_time_s > 0 and row.timed_steps == 2
        # aot_eager runs eager's kernels on AOTAutograd's graphs: it saves about what eager saves (its
        # partitioner saves some forward values eager recomputes or frees, llama-tiny: -12% to +2%),
        # and its peaks are its own (+10% to +19% here), measured, not eager's
        reference = eager[method]
        assert not reference.compiled and reference.compile_s is None
        assert row.activation_bytes == pytest.approx(reference.activation_bytes, rel=0.2)
        assert 0.8 < row.first_step_peak_bytes / reference.first_step_peak_bytes < 1.5
        assert row.breakdown is None and reference.breakdown  # the storage tracker's, eager rows only
    assert compiled["wtacrs@0.3"].activation_bytes < compiled["full"].activation_bytes


def test_a_failed_compiled_trial_leaves_nothing_alive(monkeypatch):
    """The max-batch search's rule, compiled: after an OOM in a compiled probe, neither the model
    nor its compiled graphs survive the row (Dynamo's caches would otherwise hold them)."""
    spec = JobSpec.model_validate({**SPEC, "compile": True, "measurements": ["peak_memory"]})
    models = track_built_models(monkeypatch)

    def out_of_memory(trial, mode):
        trial.forward_backward()  # the compiled step ran, holding graphs and a step's tensors
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(single, "measure_compiled_memory", out_of_memory)
    row = trials.trial_row(spec, parse_method("wtacrs@0.3"), 4)
    assert row.oom and row.compiled and row.oom_message.startswith("CUDA out of memory")
    gc.collect()
    assert models and all(ref() is None for ref in models), "the failed probe's model is still alive"


def test_each_trial_compiles_afresh():
    """Graphs compiled for one trial are dropped after it: with Dynamo's recompile limit at 1, a
    second batch size would otherwise find the limit reached and run eagerly (a max-batch search
    probes more batch sizes than the default limit of 8)."""
    spec = JobSpec.model_validate({**SPEC, "compile": True, "measurements": ["peak_memory"], "methods": ["full"]})
    # config.patch, not monkeypatch: undoing a monkeypatch deletes the setting from torch's config
    # module (torch 2.13), and every later compile in the process fails
    limit = torch._dynamo.config.recompile_limit
    with torch._dynamo.config.patch(recompile_limit=1):
        for batch in (2, 3):
            row = trials.trial_row(spec, parse_method("full"), batch)
            assert row.error is None and row.compile_graphs == 1 and row.recompiles_measured == 0
    assert torch._dynamo.config.recompile_limit == limit
