"""Trial rows of a job, on one device (single.py) or per rank (parallel.py), estimates served from
the trace cache where it holds them, and the largest batch that fits, searched with them."""

from __future__ import annotations

from contract.methods import Method
from contract.rows import MaxBatchRow, Probe, TrialRow
from contract.spec import JobSpec

from ..instruments.replay import EventLog, predictor
from . import parallel, single, trace_cache
from .base import memory_limit
from .maxbatch import search
from .progress import announce

# the event logs of this process's estimate traces, of one (spec, method) at a time: a log is a few
# MB, and the largest-batch search of a method only reads its own method's
_LOGS: dict[str, dict[int, EventLog]] = {}


def _logs(spec: JobSpec, method: Method) -> dict[int, EventLog] | None:
    """Where this (spec, method)'s traces keep their event logs; None where none are kept: not an
    estimate, or today's path (the trace cache off, the comparison path of estimate_speed.py)."""
    if spec.device != "estimate" or trace_cache.folder() is None:
        return None
    name = trace_cache.key(spec, method, 0)
    if name not in _LOGS:
        _LOGS.clear()
        _LOGS[name] = {}
    return _LOGS[name]


def trial_row(spec: JobSpec, method: Method, batch_size: int, throughput: bool = True) -> TrialRow:
    """One (method, batch size) row in the spec's mode and strategy."""

    def run() -> TrialRow:
        if spec.parallel.strategy != "none":
            return parallel.trial_row(spec, method, batch_size, throughput, _logs(spec, method))
        return single.trial_row(spec, method, batch_size, throughput, _logs(spec, method))

    if spec.device == "estimate":
        return trace_cache.cached(spec, method, batch_size, memory_limit(spec), run)
    return run()


def _probe(spec: JobSpec, row: TrialRow, limit: float | None) -> Probe:
    peak = row.reserved_bytes if row.reserved_bytes is not None else row.peak_bytes
    if row.oom and spec.device != "estimate":
        return Probe(batch_size=row.batch_size, fits=False, peak_bytes=None, reason=f"out of memory: {row.oom_message}")
    fits = limit is None or peak <= limit
    return Probe(batch_size=row.batch_size, fits=fits, peak_bytes=peak, reason="" if fits else "over the memory limit")


def max_batch_row(spec: JobSpec, method: Method) -> MaxBatchRow:
    limit = memory_limit(spec)
    return trace_cache.cached_search(spec, method, limit, lambda: _search(spec, method, limit))


def _search(spec: JobSpec, method: Method, limit: float | None) -> MaxBatchRow:

    def probe(b: int) -> Probe:
        row = trial_row(spec, method, b, throughput=False)
        if row.error:
            raise RuntimeError(row.error)
        return _probe(spec, row, limit)

    def on_probe(n: int, b: int, lo: int, hi: int) -> None:
        known = f"{lo} fits" if lo else "nothing fits yet"
        if hi <= spec.max_batch.upper:
            known += f", {hi} does not"
        announce(f"largest batch: probe {n} at batch {b} ({known})")

    # an estimate's traces of the job's own batch sizes (the sweep ran first) start the search there
    known = {}
    for b in spec.batch_sizes:
        row = trace_cache.lookup(spec, method, b, limit)
        if row is not None:
            known[b] = _probe(spec, row, limit)
    logs = _logs(spec, method) or {}

    def peak_model(lo: int, hi: int):
        """batch -> predicted peak from the two traced batches nearest the bracket that count the
        same storages (instruments/replay.py), or None."""
        near = sorted(logs, key=lambda b: (min(abs(b - lo), abs(b - hi)), b))
        for i, a in enumerate(near):
            for b in near[i + 1 :]:
                model = predictor(logs[a], logs[b])
                if model is not None:
                    return model
        return None

    result = search(probe, limit, spec.max_batch.upper, known, on_probe, peak_model)
    return MaxBatchRow(
        method=method.name,
        max_batch_size=result.max_batch_size,
        mode=spec.device,
        seq_len=spec.seq_len,
        limit_bytes=limit,
        headroom=spec.max_batch.headroom,
        capped_at_upper=result.capped,
        probes=result.probes,
    )
