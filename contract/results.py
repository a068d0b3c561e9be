"""A job's outcome: its status and its rows, as `wtacrs-prof run` writes it, a worker posts it and
`GET /api/jobs/{id}` returns it (with the server's own fields added)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from .rows import (
    POSTED,
    AttributionRow,
    ConvergenceRow,
    Environment,
    FidelityRow,
    MaxBatchRow,
    Message,
    RowBounds,
    TrialRow,
    posted,
)
from .spec import MAX_BATCH, MAX_LAYERS

MAX_ERRORS = 1000
MAX_ROWS = 100_000  # 64 batch sizes x 32 methods is 2048 trial rows; fidelity has one per layer
# A posted result's rows per list, from its job's spec: one trial row per (method, batch size), one
# max-batch, convergence and attribution row per method, one fidelity row per replaced linear layer
# of a method, each times ROW_SLACK. A transformer block has at most a few dozen linear layers
# (T5's decoder block: 4 self-attention, 4 cross-attention, 3 feed-forward), and an encoder-decoder
# builds up to 2 x MAX_LAYERS blocks.
ROW_SLACK = 2
LINEARS_PER_BLOCK = 32
FIDELITY_ROWS_PER_METHOD = 2 * MAX_LAYERS * LINEARS_PER_BLOCK


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
    errors: list[Message] = Field(default_factory=list, max_length=MAX_ERRORS)

    @model_validator(mode="before")
    @classmethod
    def _few_rows(cls, data: Any, info: ValidationInfo) -> Any:
        """A posted result: each list within what its job's spec can produce, checked before any
        row is validated (a 100 000-row list for a 4-row job is refused for its length alone)."""
        bounds = posted(info)
        if bounds is None or not isinstance(data, dict):
            return data
        for name, most in bounds.rows.items():
            rows = data.get(name)
            if isinstance(rows, list) and len(rows) > most:
                raise PydanticCustomError(
                    "too_many_rows",
                    "{name} has {count} rows; this job's spec produces at most {most}",
                    {"name": name, "count": len(rows), "most": most},
                )
        return data


class JobResult(JobRows):
    """What one run of a job produced."""

    id: str = Field(max_length=64)
    status: JobStatus
    spec: dict[str, Any]
    started_at: str | None = None
    finished_at: str | None = None


def bounds_for(spec: Mapping[str, Any]) -> RowBounds:
    """What a worker may post for a job with this (stored) spec: rows of its methods only, batch
    sizes up to the largest it can run (its batch sizes, its max-batch search's upper bound, its
    convergence batch), and per list the rows it can produce. Read from the stored dict, so a job
    stored before a bound of today's `JobSpec` was added still takes its worker's result."""
    methods = [m for m in spec.get("methods") or () if isinstance(m, str)]
    batches = [b for b in spec.get("batch_sizes") or () if isinstance(b, int)]
    largest = [*batches, _nested(spec, "max_batch", "upper"), _nested(spec, "convergence", "batch_size")]
    n_methods, n_batches = max(1, len(methods)), max(1, len(batches))
    per_method = min(MAX_ROWS, ROW_SLACK * n_methods)
    rows = {
        "results": min(MAX_ROWS, ROW_SLACK * n_methods * n_batches),
        "max_batch": per_method,
        "convergence": per_method,
        "attribution": per_method,
        "fidelity": min(MAX_ROWS, n_methods * FIDELITY_ROWS_PER_METHOD),
    }
    return RowBounds(
        methods=frozenset(methods) if methods else None,
        max_batch=min(MAX_BATCH, max([b for b in largest if isinstance(b, int) and b > 0], default=MAX_BATCH)),
        rows=rows,
    )


def posted_context(spec: Mapping[str, Any]) -> dict[str, RowBounds]:
    """The validation context of a result posted for a job with this spec."""
    return {POSTED: bounds_for(spec)}


def _nested(spec: Mapping[str, Any], section: str, key: str) -> Any:
    part = spec.get(section)
    return part.get(key) if isinstance(part, dict) else None
