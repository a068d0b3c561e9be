"""What every trial row starts from, on one device or per rank, and the memory a batch may use."""

from __future__ import annotations

import dataclasses

import torch

from contract.methods import Method
from contract.spec import JobSpec

from ..instruments.replay import EventLog
from ..trial.build import optimizer_impl

GIB = 2**30


def take_log(row: dict, logs: dict[int, EventLog] | None, batch_size: int) -> None:
    """Move a trace's event log out of its row (measure_memory's "event_log") into `logs`, labelled
    with its batch size."""
    log = row.pop("event_log", None)
    if log is not None and logs is not None:
        logs[batch_size] = dataclasses.replace(log, batch_size=batch_size)


def memory_limit(spec: JobSpec) -> float | None:
    """Bytes a batch may peak at, headroom applied (None: the device decides, by OOM)."""
    if spec.target_memory_gb is not None:
        return spec.target_memory_gb * GIB * (1 - spec.max_batch.headroom)
    if spec.device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory * (1 - spec.max_batch.headroom)
    return None


def base_row(spec: JobSpec, method: Method, batch_size: int) -> dict:
    """The fields every trial row of (method, batch size) has before it is measured."""
    row = {
        "method": method.name,
        "batch_size": batch_size,
        "seq_len": spec.seq_len,
        "mode": spec.device,
        "measured": spec.device != "estimate",
        "oom": False,
        "error": None,
        "compiled": spec.compile,
        "optimizer": spec.optimizer,
        "optimizer_impl": optimizer_impl(spec),
    }
    if spec.device == "estimate":
        row["estimate_device"] = spec.estimate_device
    if spec.parallel.strategy != "none":
        row.update(strategy=spec.parallel.strategy, world_size=spec.parallel.world_size)
    return row
