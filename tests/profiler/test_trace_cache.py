"""Fast estimates: the trace cache (a second asking answers without tracing, a stale key is never
served), the largest-batch search started from the job's own sweep (the same answers as the
search from nothing, in fewer traces), one child process per job, and progress that names the
step in progress."""

import queue
import threading

import pytest

from contract.methods import parse_method
from contract.rows import Probe
from contract.spec import JobSpec
from profiler import runner
from profiler.producers import progress, single, trace_cache, trials
from profiler.producers.base import memory_limit
from profiler.producers.maxbatch import search
from profiler.runner import run_job

STUDY = {
    "methods": ["full", "wtacrs@0.3", "lora"],
    "seq_len": 32,
    "batch_sizes": [4, 16],
    "measurements": ["peak_memory", "max_batch_size"],
    "device": "estimate",
    "target_memory_gb": 0.1,
    "max_batch": {"upper": 2048},
}


def _spec(**kw) -> JobSpec:
    return JobSpec.model_validate({"model": "bert-tiny", **STUDY, **kw})


def _count_traces(monkeypatch) -> list[int]:
    traced = []
    real = single.trial_row

    def counted(spec, method, batch_size, throughput=True, logs=None):
        traced.append(batch_size)
        return real(spec, method, batch_size, throughput, logs)

    monkeypatch.setattr(single, "trial_row", counted)
    return traced


@pytest.mark.parametrize("family", ["bert", *(pytest.param(f, marks=pytest.mark.slow) for f in ("llama", "t5"))])
def test_the_seeded_search_finds_what_the_search_from_nothing_finds(family):
    """Every method of a family, on real traces: the search started from the sweep's probes finds
    the largest batch the search from nothing finds (each batch traced once, shared by both)."""
    spec = _spec(model=f"{family}-tiny", max_batch={"upper": 512})
    limit = memory_limit(spec)
    for name in spec.methods:
        method = parse_method(name)
        traced: dict[int, Probe] = {}

        def probe(b, method=method, traced=traced):
            if b not in traced:
                traced[b] = trials._probe(spec, single.trial_row(spec, method, b, throughput=False), limit)
            return traced[b]

        plain = search(probe, limit, spec.max_batch.upper)
        plain_probes = len(traced)
        seeded = search(probe, limit, spec.max_batch.upper, {b: probe(b) for b in spec.batch_sizes})
        assert seeded.max_batch_size == plain.max_batch_size, (name, seeded, plain)
        b = seeded.max_batch_size
        assert (b == 0 or traced[b].fits) and not traced[b + 1].fits  # confirmed by traces
        new = {p.batch_size for p in seeded.probes} - set(spec.batch_sizes)
        assert len(new) <= plain_probes, name


def test_a_job_searches_from_its_sweep(monkeypatch, tmp_path):
    """Through the runner: with the cache the job's largest batch is today's, its sweep rows are
    today's to the byte, and the search needs fewer new traces."""
    spec = _spec(methods=["lora"])
    traced = _count_traces(monkeypatch)
    monkeypatch.setenv(trace_cache.ENV, "off")
    before = run_job(spec, isolate=False)
    traces_before = len(traced)
    traced.clear()
    monkeypatch.setenv(trace_cache.ENV, str(tmp_path))
    after = run_job(spec, isolate=False)
    assert not before.errors and not after.errors
    assert after.max_batch[0].max_batch_size == before.max_batch[0].max_batch_size > 16
    assert [r.model_dump() for r in after.results] == [r.model_dump() for r in before.results]
    assert len(traced) < traces_before


def test_the_sweep_between_its_ends_is_replayed(monkeypatch, tmp_path):
    """Batches 4, 8 and 16: with the cache, 4 and 16 are traced and 8 replayed from their logs,
    its peaks and breakdowns within 0.1% of today's trace of it (exact where nothing is sampled);
    asked again, the replayed row is served too; the largest batch is today's."""
    spec = _spec(batch_sizes=[4, 8, 16])
    monkeypatch.setenv(trace_cache.ENV, "off")
    today = run_job(spec, isolate=False)
    monkeypatch.setenv(trace_cache.ENV, str(tmp_path))
    traced = _count_traces(monkeypatch)
    fast = run_job(spec, isolate=False)
    assert not today.errors and not fast.errors
    assert sorted(set(traced) & {4, 8, 16}) == [4, 16]
    assert [m.max_batch_size for m in fast.max_batch] == [m.max_batch_size for m in today.max_batch]
    assert len(fast.results) == len(today.results) == 9
    for was, row in zip(today.results, fast.results):
        assert (row.method, row.batch_size) == (was.method, was.batch_size) and row.predicted == (row.batch_size == 8)
        if not row.predicted:
            assert row.model_dump() == was.model_dump()
            continue
        exact = parse_method(row.method).sampler is None
        for got, want in (
            (row.peak_bytes, was.peak_bytes),
            (row.first_step_peak_bytes, was.first_step_peak_bytes),
            *((row.breakdown[c], was.breakdown[c]) for c in was.breakdown),
            *((row.first_step_breakdown[c], was.first_step_breakdown[c]) for c in was.first_step_breakdown),
        ):
            assert got == want if exact else abs(got - want) <= 1e-3 * was.peak_bytes, (row.method, got, want)
    traced.clear()
    again = run_job(spec, isolate=False)
    assert traced == [] and [r.model_dump() for r in again.results] == [r.model_dump() for r in fast.results]
    # said where the rows are shown: the CLI's table and the job page's memory chart
    from app.web.job_charts import memory_vs_batch
    from profiler.tables import tables

    assert [c.header for c in tables(fast)[0].columns][3] == "replayed"
    assert "replayed" not in [c.header for c in tables(today)[0].columns]
    title = memory_vs_batch(fast.results, None, "estimate")["layout"]["title"]
    assert "(estimated; batch 8 replayed)" in str(title)
    many = [fast.results[0].model_copy(update={"batch_size": b, "predicted": True}) for b in (1, 2, 3)]
    assert "(estimated; 3 batch sizes replayed)" in str(memory_vs_batch(many, None, "estimate")["layout"]["title"])
    measured = [
        r.model_copy(update={"mode": "cpu"}) for r in many
    ]  # a posted row's claim does not relabel a measurement
    assert "replayed" not in str(memory_vs_batch(measured, None, "cpu")["layout"]["title"])


def test_the_same_question_twice_answers_without_tracing(monkeypatch, tmp_path):
    monkeypatch.setenv(trace_cache.ENV, str(tmp_path))
    spec = _spec(methods=["wtacrs@0.3"])
    first = run_job(spec, isolate=False)
    traced = _count_traces(monkeypatch)
    second = run_job(spec, isolate=False)
    assert traced == [] and not second.errors
    assert second.model_dump(include={"results", "max_batch"}) == first.model_dump(include={"results", "max_batch"})
    # another memory target: the same traces, `oom` read again against the new limit
    third = run_job(spec.model_copy(update={"target_memory_gb": 10.0, "measurements": ["peak_memory"]}), isolate=False)
    assert traced == [] and all(r.oom for r in first.results) and not any(r.oom for r in third.results)


def test_a_largest_batch_asked_again_is_not_searched_again(monkeypatch, tmp_path):
    """Its traces are kept, but a search without their event logs would trace other batches (the
    warm T5-Large study traced six): the answer is kept, keyed by the traces and the question."""
    monkeypatch.setenv(trace_cache.ENV, str(tmp_path))
    spec = _spec(methods=["lora"], measurements=["max_batch_size"])
    first = run_job(spec, isolate=False).max_batch
    searched = []
    real = trials.search
    monkeypatch.setattr(trials, "search", lambda *a, **k: searched.append(1) or real(*a, **k))
    traced = _count_traces(monkeypatch)
    assert run_job(spec, isolate=False).max_batch == first and searched == traced == []
    for other in ({"target_memory_gb": 0.2}, {"max_batch": {"upper": 64}}, {"max_batch": {"headroom": 0.1}}):
        again = run_job(JobSpec.model_validate({**spec.model_dump(), **other}), isolate=False)
        assert searched == [1] and again.max_batch != first, other  # another question: searched
        searched.clear()
    for path in tmp_path.glob("largest-*.json"):
        path.write_text("{not json")  # a broken entry is a miss
    again = run_job(spec, isolate=False).max_batch  # searched again (its probes may differ: no logs)
    assert again[0].max_batch_size == first[0].max_batch_size and searched == [1]


def test_a_key_is_everything_a_trace_depends_on(monkeypatch):
    method, base = parse_method("full"), _spec()
    key = trace_cache.key(base, method, 4)
    assert trace_cache.key(base, method, 8) != key
    assert trace_cache.key(base, parse_method("lora"), 4) != key
    for change in (
        {"seq_len": 64},
        {"dtype": "bf16"},
        {"optimizer": "sgd"},
        {"seed": 1},
        {"lora_r": 4},
        {"estimate_device": "cpu"},
        {"model": "llama-tiny"},
        {"model": {"family": "bert", "overrides": {"num_hidden_layers": 3}}},
    ):
        assert trace_cache.key(JobSpec.model_validate({**base.model_dump(), **change}), method, 4) != key, change
    for same in ({"batch_sizes": [1]}, {"methods": ["lora"]}, {"target_memory_gb": 80}, {"steps": 9}, {"timeout_s": 5}):
        assert trace_cache.key(JobSpec.model_validate({**base.model_dump(), **same}), method, 4) == key, same
    # what the wtacrs ops are traced as: the Triton kernels' allocations or the reference
    monkeypatch.setenv("WTACRS_TRITON", "0")
    assert trace_cache.key(base, method, 4) != key
    monkeypatch.delenv("WTACRS_TRITON")
    assert trace_cache.key(base, method, 4) == key
    # the library's own code and the versions are in it: an edit makes every old entry unreachable
    monkeypatch.setattr(trace_cache, "_code_and_versions", lambda: "edited")
    assert trace_cache.key(base, method, 4) != key


def test_what_is_not_kept(monkeypatch, tmp_path):
    monkeypatch.setenv(trace_cache.ENV, str(tmp_path))
    spec, method = _spec(), parse_method("full")
    failed = single.trial_row(spec.model_copy(update={"seq_len": 10**6}), method, 4)  # no such position
    trace_cache.store(spec, method, 4, failed)
    assert failed.error and not list(tmp_path.iterdir())
    measured = JobSpec.model_validate({**spec.model_dump(), "device": "cpu"})
    assert trace_cache.lookup(measured, method, 4, None) is None  # measurements are never served
    (tmp_path / f"{trace_cache.key(spec, method, 4)}.json").write_text("{not json")
    assert trace_cache.lookup(spec, method, 4, None) is None  # a broken entry is a miss
    monkeypatch.setenv(trace_cache.ENV, "off")
    assert trace_cache.folder() is None


def test_the_search_starts_from_known_probes_and_still_confirms():
    peaks = {b: 100 * b + 1000 for b in range(1, 5000)}
    asked = []

    def probe(b):
        asked.append(b)
        return Probe(batch_size=b, fits=peaks[b] <= 50_000, peak_bytes=peaks[b])

    plain = search(probe, 50_000, 4096)
    asked_plain, asked[:] = list(asked), []
    known = {b: Probe(batch_size=b, fits=peaks[b] <= 50_000, peak_bytes=peaks[b]) for b in (16, 64)}
    seeded = search(probe, 50_000, 4096, known)
    assert seeded.max_batch_size == plain.max_batch_size == 490
    assert set(asked) >= {490, 491} and len(asked) < len(asked_plain)


def test_methods_share_one_child_and_a_failure_gets_a_fresh_one(monkeypatch):
    started = _count_children(monkeypatch)
    spec = JobSpec.model_validate(
        {
            "model": "bert-tiny",
            "methods": ["full", "lora"],
            "seq_len": 8,
            "batch_sizes": [1],
            "measurements": ["peak_memory"],
            "device": "cpu",
            "steps": 1,
            "warmup": 0,
        }
    )
    result = run_job(spec, isolate=True)
    assert result.status == "succeeded" and len(started) == 1
    assert [r.method for r in result.results] == ["full", "lora"]
    started.clear()
    result = run_job(spec.model_copy(update={"timeout_s": 0.01}), isolate=True)
    assert len(started) == 2  # the second method in a fresh child
    assert [e.split(":")[0] for e in result.errors] == ["full", "lora"]


def _count_children(monkeypatch) -> list[int]:
    """The children a job starts (each one's number; every child is offered all the methods)."""
    started = []
    real = runner.mp.get_context

    def counting(method):
        ctx = real(method)

        class Ctx:
            Queue, Array = ctx.Queue, ctx.Array

            def Process(self, *a, **kw):  # noqa: N802 (the multiprocessing name)
                started.append(kw["args"][3])
                return ctx.Process(*a, **kw)

        return Ctx()

    monkeypatch.setattr(runner.mp, "get_context", counting)
    return started


def test_an_estimates_methods_run_in_a_child_per_core(monkeypatch, tmp_path):
    """Two cores: three methods over two children running at once, each taking the next method; the
    rows come back in the spec's order of methods, each error names its own method, and a failed
    child's lane goes on in a fresh one."""
    monkeypatch.setenv(trace_cache.ENV, str(tmp_path))
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda pid: {0, 1})
    started = _count_children(monkeypatch)
    spec = _spec(methods=["full", "lora", "wtacrs@0.3"], measurements=["peak_memory"])
    messages = []
    result = run_job(spec, isolate=True, progress=lambda done, total, m: messages.append(m))
    assert result.status == "succeeded", result.errors
    assert len(started) == 2
    assert [r.method for r in result.results] == ["full", "full", "lora", "lora", "wtacrs@0.3", "wtacrs@0.3"]
    alone = run_job(spec.model_copy(update={"methods": ["full"]}), isolate=False)
    assert [r.model_dump() for r in result.results[:2]] == [r.model_dump() for r in alone.results]
    assert {m.split(":")[0] for m in messages} == set(spec.methods)
    started.clear()
    result = run_job(spec.model_copy(update={"timeout_s": 0.01}), isolate=True)
    assert len(started) == 3  # the third method in a fresh child
    assert sorted(e.split(":")[0] for e in result.errors) == sorted(spec.methods)
    assert runner.lanes(spec) == 2 and runner.lanes(spec.model_copy(update={"device": "cpu"})) == 1


def test_progress_names_every_method_in_progress(monkeypatch):
    """Lanes run methods at once: the progress line names each one's step, the latest first, and
    drops a method once it is done."""
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda pid: {0, 1})
    both = threading.Barrier(2, timeout=10)

    def child(spec, methods, child, handle, should_cancel):
        method = child[3]
        handle({"kind": "start", "data": method, "method": method})
        handle({"kind": "status", "data": "tracing batch 4 (1 of 2)", "method": method})
        both.wait()  # both methods are in progress now
        handle({"kind": "tick", "data": "tracing batch 16 (2 of 2)", "method": method})
        both.wait()
        handle({"kind": "method-done", "data": method, "method": method})
        return "done"

    monkeypatch.setattr(runner, "_run_isolated", child)
    messages = []
    spec = _spec(methods=["full", "lora"], measurements=["peak_memory"])
    run_job(spec, isolate=True, progress=lambda done, total, m: messages.append(m))
    last_ticks = [m for m in messages if "2 of 2" in m]
    assert len(last_ticks) == 2 and " · " in last_ticks[-1], messages
    first, second = (part.split(":")[0] for part in last_ticks[-1].split(" · "))
    assert {first, second} == {"full", "lora"} and last_ticks[-1].startswith(f"{first}: tracing batch 16 (2 of 2)")


def test_a_lane_that_raises_stops_the_others_and_raises(monkeypatch):
    """Trouble in the parent's own code (a child that cannot be started) is the job's to raise, as
    with one child (the worker retries it), once every lane has stopped: no method goes missing
    silently from a job that says it succeeded."""
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda pid: {0, 1})
    real, calls = runner._run_isolated, []

    def flaky(spec, methods, child, handle, should_cancel):
        calls.append(child[3])
        if len(calls) == 1:
            raise OSError("too many open files")
        return real(spec, methods, child, handle, should_cancel)

    monkeypatch.setattr(runner, "_run_isolated", flaky)
    with pytest.raises(OSError, match="too many open files"):
        run_job(_spec(methods=["full", "lora", "wtacrs@0.3"], measurements=["peak_memory"]), isolate=True)
    assert len(calls) <= 2


def test_the_parent_of_a_job_imports_no_torch():
    """The child imports torch and transformers; the parent (CLI, worker) waiting on it need not:
    a second torch import before the child starts cost the minimal job ~2 s (issue 26)."""
    import subprocess
    import sys

    code = (
        "import sys, profiler.cli, profiler.runner, profiler.worker; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_progress_names_the_step_in_progress(monkeypatch, tmp_path):
    monkeypatch.setenv(trace_cache.ENV, str(tmp_path))
    messages = []
    run_job(_spec(methods=["lora"]), isolate=False, progress=lambda done, total, m: messages.append(m))
    assert "lora: tracing batch 4 (1 of 2)" in messages and "lora: tracing batch 16 (2 of 2)" in messages
    assert any(m.startswith("lora: largest batch: probe 1 at batch ") and "16 fits" in m for m in messages), messages


def test_the_heartbeat_repeats_the_step_with_its_time(monkeypatch):
    monkeypatch.setattr(runner, "HEARTBEAT_S", 0.01)
    q, stop = queue.Queue(), threading.Event()
    progress.listen(None)
    progress.announce("tracing batch 32 (2 of 4)")
    beat = threading.Thread(target=runner._heartbeat, args=(q, stop))
    beat.start()
    event = q.get(timeout=5)
    stop.set()
    beat.join()
    assert event == {"kind": "status", "data": "tracing batch 32 (2 of 4), 0 s"}
