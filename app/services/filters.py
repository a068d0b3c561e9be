"""The one filter over jobs and result rows, whichever page or endpoint asks.

An empty value ("" from a form's "any", None, an empty list) means "no condition", so a form can
send every field. `mode` is the device a job ran on: `Job.device` for jobs, `ResultRow.mode` for
rows (the same three words, cuda / cpu / estimate). `strategy`, `world_size` and `compiled` select
rows by how they ran (a job's rows all ran one way; its spec says which). `compiled` is the one
where False is a condition (eager rows only): None is its "any"."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from app.models import Job, ResultRow
from contract.results import JobStatus


def _tuple(values: Iterable[str] | None) -> tuple[str, ...]:
    return tuple(v for v in values or () if v)


@dataclass(frozen=True)
class Filter:
    model: str | None = None
    methods: tuple[str, ...] = ()
    mode: str | None = None
    dtype: str | None = None
    job_ids: tuple[str, ...] = ()
    since: dt.datetime | None = None  # inclusive, UTC
    until: dt.datetime | None = None  # exclusive, UTC
    status: JobStatus | None = None  # jobs only: rows exist for finished attempts alone
    strategy: str | None = None  # rows only: none, ddp or fsdp
    world_size: int | None = None  # rows only
    compiled: bool | None = None  # rows only: True the torch.compile rows, False the eager ones

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", _tuple(self.methods))
        object.__setattr__(self, "job_ids", _tuple(self.job_ids))

    def jobs_where(self) -> list:
        conditions = [
            column == value
            for column, value in (
                (Job.status, self.status),
                (Job.model, self.model),
                (Job.device, self.mode),
                (Job.dtype, self.dtype),
            )
            if value
        ]
        conditions += [Job.id.in_(self.job_ids)] if self.job_ids else []
        conditions += [Job.created_at >= self.since] if self.since else []
        conditions += [Job.created_at < self.until] if self.until else []
        return conditions

    def _row_equal(self) -> dict[str, str | int | bool]:
        pairs = {
            "model": self.model,
            "mode": self.mode,
            "dtype": self.dtype,
            "strategy": self.strategy,
            "world_size": self.world_size,
        }
        equal: dict[str, str | int | bool] = {column: value for column, value in pairs.items() if value}
        if self.compiled is not None:  # False selects too
            equal["compiled"] = self.compiled
        return equal

    def rows_where(self) -> list:
        conditions = [getattr(ResultRow, column) == value for column, value in self._row_equal().items()]
        conditions += [ResultRow.job_id.in_(self.job_ids)] if self.job_ids else []
        conditions += [ResultRow.method.in_(self.methods)] if self.methods else []
        conditions += [ResultRow.created_at >= self.since] if self.since else []
        conditions += [ResultRow.created_at < self.until] if self.until else []
        return conditions

    def rows_sql(self) -> tuple[str, dict]:
        """`rows_where` as driver-level SQL for PostgreSQL (psycopg's %(name)s): the column
        names are ours, every value is bound."""
        equal = self._row_equal()
        parts = [f"{column} = %({column})s" for column in equal]
        params: dict = dict(equal)
        for column, name, values in (("job_id", "job_ids", self.job_ids), ("method", "methods", self.methods)):
            if values:
                parts.append(f"{column} = ANY(%({name})s)")
                params[name] = list(values)
        if self.since:
            parts.append("created_at >= %(since)s")
            params["since"] = self.since
        if self.until:
            parts.append("created_at < %(until)s")
            params["until"] = self.until
        return " AND ".join(parts) or "TRUE", params


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int = 0
