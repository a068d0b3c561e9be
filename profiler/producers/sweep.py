"""A method's batch sweep: a row per batch size the spec asks for, in its order. An estimate with
the trace cache on traces the smallest and the largest and replays the ones between from their
event logs (instruments/replay.py): every storage's size is interpolated and the step replayed,
which gives both peaks and their breakdowns (`predicted` rows); where the two logs do not count
the same storages, or a trace failed, the batch is traced like the others. Today's path (the cache
off) traces every batch."""

from __future__ import annotations

from collections.abc import Iterator

from contract.methods import Method
from contract.rows import TrialRow
from contract.spec import JobSpec

from ..instruments.replay import EventLog, replayer
from ..trial.measure import reconcile
from . import trace_cache
from .base import memory_limit
from .progress import announce
from .trials import _logs, trial_row


def predicted_row(spec: JobSpec, batch_size: int, low: tuple[TrialRow, EventLog], high: tuple[TrialRow, EventLog]):
    """The row at `batch_size` replayed from two traced rows and their logs; None where their logs
    do not count the same storages. The peaks and breakdowns are the replay's; the saved bytes
    (activations, an offload's host bytes) interpolated; the rest is the traced rows'."""
    (a, a_log), (b, b_log) = low, high
    replay_at = replayer(a_log, b_log)
    if replay_at is None or any(r.error or r.oom_message or r.peak_bytes is None for r in (a, b)):
        return None
    replay = replay_at(batch_size)
    t = (batch_size - a.batch_size) / (b.batch_size - a.batch_size)

    def between(x: int | None, y: int | None) -> int | None:
        return None if x is None or y is None else round(x + (y - x) * t)

    row = a.model_dump()
    row.update(
        batch_size=batch_size,
        predicted=True,
        peak_bytes=replay.peak,
        tracked_peak_bytes=replay.peak - a_log.fixed,
        first_step_peak_bytes=replay.first_step_peak,
        breakdown=replay.breakdown,
        first_step_breakdown=replay.first_step_breakdown,
        untracked_bytes=None,  # reconcile: the workspaces (`fixed`), into `other`
        first_step_untracked_bytes=None,
        activation_bytes=between(a.activation_bytes, b.activation_bytes),
        host_bytes=between(a.host_bytes, b.host_bytes),
    )
    reconcile(row)
    limit = memory_limit(spec)
    row["oom"] = limit is not None and row["peak_bytes"] > limit
    return TrialRow.model_validate(row)


def sweep_rows(spec: JobSpec, method: Method) -> Iterator[TrialRow]:
    verb = "tracing" if spec.device == "estimate" else "measuring"
    sizes = spec.batch_sizes
    logs = _logs(spec, method) if spec.parallel.strategy == "none" else None
    ends = (min(sizes), max(sizes))
    rows: dict[int, TrialRow] = {}

    def traced(b: int) -> TrialRow:
        if b not in rows:
            announce(f"{verb} batch {b} ({sizes.index(b) + 1} of {len(sizes)})")
            rows[b] = trial_row(spec, method, b)
        return rows[b]

    for b in sizes:
        row = None
        if logs is not None and b not in ends:
            row = trace_cache.lookup(spec, method, b, memory_limit(spec), source=ends)
            if row is None:
                low, high = traced(ends[0]), traced(ends[1])
                if ends[0] in logs and ends[1] in logs:
                    announce(f"replaying batch {b} ({sizes.index(b) + 1} of {len(sizes)}) from {ends[0]} and {ends[1]}")
                    row = predicted_row(spec, b, (low, logs[ends[0]]), (high, logs[ends[1]]))
                    if row is not None:
                        trace_cache.store(spec, method, b, row, source=ends)
        yield row if row is not None else traced(b)
