"""The event log of a trace (instruments/replay.py): replayed, it gives the traced peak to the byte;
logs at two batch sizes predict the peak at a third; the largest-batch search it guides finds what
the search from nothing finds, confirmed by traces, in two new traces where the prediction is right."""

import gc

import pytest
import torch

from contract.methods import parse_method
from contract.spec import JobSpec
from profiler.instruments.replay import RESIZE, predictor
from profiler.instruments.tracker import StorageTracker
from profiler.producers import parallel, single, sweep, trials
from profiler.producers.base import memory_limit
from profiler.producers.maxbatch import search

KIB = 1024


def test_a_replayed_log_is_the_trackers_own_count():
    """Allocations, frees, a resize both ways and the peak's reset, on real tensors."""
    tracker = StorageTracker(block=512, record=True)
    with tracker:
        before = torch.empty(300 * KIB, dtype=torch.uint8)  # counted before the reset: the floor
        tracker.mark([before], "parameters")
        tracker.reset_peak()
        a = torch.empty(1000, dtype=torch.uint8)
        tracker.mark([a], "other")
        b = torch.empty(64 * KIB, dtype=torch.uint8)
        tracker.mark([b], "other")
        storage = b.untyped_storage()
        storage.resize_(0)
        tracker.resized(storage._cdata, 0)
        c = torch.empty(10 * KIB, dtype=torch.uint8)
        tracker.mark([c], "other")
        storage.resize_(128 * KIB)
        tracker.resized(storage._cdata, 128 * KIB)
        del a, c
        gc.collect()
    log = tracker.event_log(fixed=7)
    assert tracker.peak == 300 * KIB + 128 * KIB + 10 * KIB + 1024
    assert log.peak() == tracker.peak + 7
    del b, storage, before


def _spec(model: str, **kw) -> JobSpec:
    fields = {"model": model, "methods": ["full"], "seq_len": 32, "batch_sizes": [4], "device": "estimate"}
    measured = {"measurements": ["peak_memory", "max_batch_size"], "target_memory_gb": 0.1, "max_batch": {"upper": 512}}
    return JobSpec.model_validate(fields | measured | kw)


METHODS = ["full", "lora", "checkpointing", "wtacrs@0.3", "lora+wtacrs@0.1", "offload", "meft1"]


@pytest.mark.parametrize("family", ["bert", *(pytest.param(f, marks=pytest.mark.slow) for f in ("llama", "t5"))])
def test_two_traces_predict_a_third(family):
    """Every method of a family: each log replays to its own trace's peak, to the byte; logs at
    batches 3 and 17 predict batch 10's peak, exactly where every size is affine in the batch and
    within what a sampled layer's ceil(ratio * tokens) rows can add (under 0.01%) otherwise."""
    spec = _spec(f"{family}-tiny")
    for name in METHODS:
        method = parse_method(name)
        if method.meft and family == "t5":
            continue  # MEFT has no T5 form (README, Methods)
        logs, rows = {}, {}
        for b in (3, 10, 17):
            rows[b] = single.trial_row(spec, method, b, throughput=False, logs=logs)
            assert not rows[b].error, (name, rows[b].error)
            assert logs[b].peak() == rows[b].peak_bytes, (name, b)
        model = predictor(logs[3], logs[17])
        assert model is not None, name
        predicted, traced = model(10), rows[10].peak_bytes
        if method.sampler is None:
            assert predicted == traced, name
        else:
            assert abs(predicted - traced) <= 1e-4 * traced, (name, predicted, traced)
        # the whole row: replayed at a traced batch it is that trace's, to the byte; between, every
        # byte count is the trace's (within a sampled layer's rounding, under 0.01% of the peak)
        low, high = (rows[3], logs[3]), (rows[17], logs[17])
        own = sweep.predicted_row(spec, 3, low, high)
        assert own.predicted and own.model_dump(exclude={"predicted"}) == rows[3].model_dump(exclude={"predicted"})
        between = sweep.predicted_row(spec, 10, low, high).model_dump()
        for field, value in rows[10].model_dump(exclude={"predicted"}).items():
            got = between[field]
            if isinstance(value, dict):
                assert sum(got.values()) == between[field.replace("breakdown", "peak_bytes")], (name, field)
                value, got = sorted(value.items()), sorted(got.items())
                assert [k for k, _ in value] == [k for k, _ in got]
                value, got = [v for _, v in value], [v for _, v in got]
            else:
                value, got = [value], [got]
            for v, g in zip(value, got):
                if method.sampler is None or not isinstance(v, int) or isinstance(v, bool):
                    assert g == v, (name, field, g, v)
                else:
                    assert abs(g - v) <= 1e-4 * traced, (name, field, g, v)


def test_a_ranks_logs_predict_its_peak_too():
    """FSDP rank 0 under the fake process group (the shards' resizes in the log): its own log replays
    to its peak, and two predict a third (exactly without sampling), so its largest-batch search is
    guided as a single device's is."""
    spec = _spec("llama-tiny", dtype="bf16-weights", parallel={"strategy": "fsdp", "world_size": 2})
    for name in ["full", "wtacrs@0.3"]:
        logs, rows = {}, {}
        for b in (3, 10, 17):
            rows[b] = parallel.trial_row(spec, parse_method(name), b, throughput=False, logs=logs)
            assert not rows[b].error and logs[b].peak() == rows[b].peak_bytes, (name, b, rows[b].error)
        predicted, traced = predictor(logs[3], logs[17])(10), rows[10].peak_bytes
        assert predicted == traced if name == "full" else abs(predicted - traced) <= 1e-4 * traced, name
        assert (logs[3].kinds == RESIZE).any(), "FSDP frees and re-allocates its unsharded parameters"


def test_logs_of_different_steps_predict_nothing():
    spec = _spec("bert-tiny")
    logs = {}
    single.trial_row(spec, parse_method("full"), 4, throughput=False, logs=logs)
    full = logs[4]
    single.trial_row(spec, parse_method("lora"), 8, throughput=False, logs=logs)
    assert predictor(full, logs[8]) is None
    assert predictor(full, full) is None  # one batch size: no slope


@pytest.mark.parametrize("family", ["bert", pytest.param("t5", marks=pytest.mark.slow)])
def test_the_replay_guided_search_finds_the_answer_in_two_new_traces(family, monkeypatch, tmp_path):
    """From the sweep's traces (batches 4 and 16), every method's largest batch is the one the
    search from nothing finds, confirmed by traces (B fits, B+1 does not), in two new traces."""
    monkeypatch.setenv("WTACRS_TRACE_CACHE", str(tmp_path))
    spec = _spec(f"{family}-tiny", seq_len=128, batch_sizes=[4, 16], target_memory_gb=0.2, max_batch={"upper": 4096})
    limit = memory_limit(spec)
    for name in ["full", "checkpointing", "wtacrs@0.3", "lora+wtacrs@0.1"]:
        method = parse_method(name)
        traced, logs = {}, {}

        def probe(b, method=method, traced=traced, logs=logs):
            if b not in traced:
                traced[b] = trials._probe(spec, single.trial_row(spec, method, b, throughput=False, logs=logs), limit)
            return traced[b]

        plain = search(probe, limit, spec.max_batch.upper)
        known = {b: probe(b) for b in spec.batch_sizes}
        sweep_logs = {b: logs[b] for b in spec.batch_sizes}
        new = []

        def guided_probe(b, probe=probe, new=new):
            new.append(b)
            return probe(b)

        def model(lo, hi, sweep_logs=sweep_logs, logs=logs, new=new):
            # what the job would have: the sweep's logs and those of the probes this search made
            return predictor(*[sweep_logs.get(b) or logs[b] for b in ([4, 16] if not new else [16, new[-1]])])

        guided = search(guided_probe, limit, spec.max_batch.upper, known, peak_model=model)
        answer = guided.max_batch_size
        assert answer == plain.max_batch_size, (name, guided, plain)
        if guided.capped:  # the model says the spec's upper bound fits: one trace confirms it
            assert new == [spec.max_batch.upper] and traced[answer].fits, (name, new)
        else:
            assert traced[answer].fits and not traced[answer + 1].fits
            assert new == [answer, answer + 1], (name, new)
