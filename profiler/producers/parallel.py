"""DDP and FSDP trial rows (spec.parallel.strategy != "none"): traced as rank 0 on estimate, one
process per rank on cpu and cuda (ranks.py). How a rank is wrapped and counted: sharding.py."""

from __future__ import annotations

from contract.methods import Method
from contract.rows import TrialRow
from contract.spec import JobSpec

from ..instruments.replay import EventLog
from ..trial.mode import trial_in_mode
from .base import base_row, memory_limit, take_log
from .outcome import failure
from .ranks import measured_rows
from .sharding import RankTracker, fake_process_group, sharded_trial


def _estimate(spec: JobSpec, method: Method, batch_size: int, record: bool) -> dict:
    """Rank 0 of world_size, traced under PyTorch's fake process group."""
    with trial_in_mode(spec, method, batch_size, outer=fake_process_group(spec.parallel.world_size)) as run:
        kernels = run.kernels
        tracker = RankTracker(block=kernels.round_bytes if kernels else 1, record=record)
        return sharded_trial(spec, run.trial, run.trial.device, run.outer, tracker, "estimate")


def trial_row(
    spec: JobSpec, method: Method, batch_size: int, throughput: bool = True, logs: dict[int, EventLog] | None = None
) -> TrialRow:
    """`logs`: where an estimate keeps its trace's event log, by batch size (instruments/replay.py)."""
    if spec.device != "estimate":
        return measured_rows(spec, [method], batch_size, throughput)[0]
    row = base_row(spec, method, batch_size)
    row["rank"] = 0
    try:
        row.update(_estimate(spec, method, batch_size, record=logs is not None))
        take_log(row, logs, batch_size)
        limit = memory_limit(spec)
        row["oom"] = limit is not None and row["peak_bytes"] > limit
    except Exception as err:
        row.update(failure(err))
    return TrialRow.model_validate(row)
