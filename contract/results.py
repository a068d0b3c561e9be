"""A job's outcome: its status and its rows, as `wtacrs-prof run` writes it, a worker posts it and
`GET /api/jobs/{id}` returns it (with the server's own fields added)."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .rows import AttributionRow, ConvergenceRow, Environment, FidelityRow, MaxBatchRow, TrialRow

MAX_ERRORS = 1000
MAX_ROWS = 100_000  # 64 batch sizes x 32 methods is 2048 trial rows; fidelity has one per layer


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    def __str__(self) -> str:  # so f-strings and SQL parameters read "failed", not "JobStatus.failed"
        return self.value


FINAL = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class JobRows(BaseModel):
    """The measured rows, one list per kind (`contract.measurements.FIELDS` names them)."""

    model_config = ConfigDict(extra="forbid")

    results: list[TrialRow] = Field(default_factory=list, max_length=MAX_ROWS)
    max_batch: list[MaxBatchRow] = Field(default_factory=list, max_length=MAX_ROWS)
    fidelity: list[FidelityRow] = Field(default_factory=list, max_length=MAX_ROWS)
    convergence: list[ConvergenceRow] = Field(default_factory=list, max_length=MAX_ROWS)
    attribution: list[AttributionRow] = Field(default_factory=list, max_length=MAX_ROWS)
    environment: Environment | None = None
    errors: list[str] = Field(default_factory=list, max_length=MAX_ERRORS)


class JobResult(JobRows):
    """What one run of a job produced."""

    id: str = Field(max_length=64)
    status: JobStatus
    spec: dict[str, Any]
    started_at: str | None = None
    finished_at: str | None = None
