"""Result rows: saving a worker's rows, querying them across jobs, and the one comparison of
methods that the API and the compare page share.

The comparison rule: for each (model, mode, dtype, strategy, world_size, compiled, method, batch)
the latest stored row (the highest id, chosen in SQL, so no page of rows has to be pulled first),
and its ratios to the baseline method's latest row at the same (model, mode, dtype, strategy,
world_size, compiled, batch). A 1-GPU run and an 8-rank FSDP run of one method are so two series
(`series`: "full", "full · fsdp×8"), and an eager run and a torch.compile run two more ("full",
"full · compiled"), never one overwriting the other, each compared with the baseline run the same
way: a compiled wtacrs row with the compiled full row, an eager one with the eager full row.
OOM rows are kept (an OOM is a measurement: the page shows "OOM") but have no ratio, nor does any
row whose baseline is missing, OOM or lacks the number."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, defer

from app.models import Job, ResultRow
from app.services.filters import Filter, Page
from app.timestamps import iso_utc
from contract.results import JobRows, JobStatus

MAX_SCANNED = 5000  # GPU rows read for one model, dtype and length (the largest batches first)
MAX_JOBS_SCANNED = 200  # jobs whose largest batches the compare page reads, the latest

# the flat columns of a row, as the query, the CSV and JSON exports give them
COLUMNS = (
    "job_id",
    "model",
    "method",
    "batch_size",
    "mode",
    "dtype",
    "peak_bytes",
    "first_step_peak_bytes",
    "activation_bytes",
    "tokens_per_s",
    "oom",
    "error",
    "device_name",
    "created_at",
    "strategy",  # last, so a CSV read by position before they existed still reads the same
    "world_size",
    "compiled",  # after them for the same reason
    "model_label",  # what pages print for `model` (0005)
)


def save(session: Session, job_id: str, result: JobRows) -> None:
    """A finished attempt's rows: the trial rows in their own table (queried across jobs), the
    other lists and the environment as the job's outcome. Whether the job succeeded is the
    queue's to say (`JobQueue.complete`)."""
    job = session.get(Job, job_id)
    device_name = result.environment.device_name if result.environment else None
    parallel = job.spec.get("parallel") or {}
    for row in result.results:
        # the row's own word first (it says how it ran); the spec's for a row that does not say
        strategy = row.strategy or parallel.get("strategy") or "none"
        world_size = 1 if strategy == "none" else row.world_size or parallel.get("world_size") or 1
        session.add(
            ResultRow(
                job_id=job.id,
                model=job.model,
                model_label=job.model_label,
                method=row.method,
                batch_size=row.batch_size,
                mode=row.mode,
                dtype=job.dtype,
                strategy=strategy,
                world_size=world_size,
                compiled=bool(row.compiled),  # TrialRow's default, False, for a row from before compile
                peak_bytes=row.peak_bytes,
                first_step_peak_bytes=row.first_step_peak_bytes,
                activation_bytes=row.activation_bytes,
                tokens_per_s=row.tokens_per_s,
                oom=row.oom,
                error=row.error,
                device_name=device_name,
                data=row.model_dump(mode="json", exclude_unset=True),
            )
        )
    job.outcome = result.model_dump(mode="json", exclude_unset=True, exclude={"results"})
    job.progress = 1.0
    # the last heartbeat's "tracing batch 32 (2 of 4)" would otherwise stand on a finished job
    job.progress_message = f"done: {len(result.results)} rows stored"


def outcome_fields(job: Job) -> dict:
    """The stored outcome as `JobRows` fields (all but the trial rows, which have their table)."""
    fields = JobRows.model_fields.keys() - {"results"}
    return {k: v for k, v in (job.outcome or {}).items() if k in fields and v is not None}


# --- queries across jobs ---


def _ordered(stmt, f: Filter, page: Page):
    newest_first = stmt.where(*f.rows_where()).order_by(ResultRow.created_at.desc(), ResultRow.id.desc())
    return newest_first.limit(page.limit).offset(page.offset)


def flat_rows(conn: Connection | Session, f: Filter, page: Page) -> list[dict]:
    """The flat columns as plain dicts (timestamps as text): no ORM objects, no JSON blob."""
    stmt = _ordered(select(*(getattr(ResultRow, c) for c in COLUMNS)), f, page)
    return [{**r, "created_at": iso_utc(r["created_at"])} for r in conn.execute(stmt).mappings()]


# PostgreSQL's own JSON for a timestamptz follows the session's time zone ("+02:00"); write the
# API's one format instead, dropping a zero fraction as Python's isoformat does.
_PG_ISO = "replace(to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '.000000Z', 'Z')"
_PG_PAGE = (
    "SELECT coalesce(json_agg(json_build_object("
    + ", ".join(f"'{c}', {_PG_ISO.format(c=c) if c == 'created_at' else c}" for c in COLUMNS)
    + ") ORDER BY created_at DESC, id DESC)::text, '[]') FROM (SELECT id, "
    + ", ".join(COLUMNS)
    + " FROM results WHERE {where} ORDER BY created_at DESC, id DESC LIMIT %(limit)s OFFSET %(offset)s) AS page"
)


def rows_json(conn: Connection, f: Filter, page: Page) -> str:
    """`flat_rows` as a JSON array. On PostgreSQL the database writes the JSON and the SQL goes
    to the driver as text: building SQLAlchemy expressions and a Python object per row were
    most of this endpoint's CPU time (benchmarks/RESULTS.md). Elsewhere Python does it."""
    if conn.dialect.name != "postgresql":
        return json.dumps(flat_rows(conn, f, page))
    where, params = f.rows_sql()
    sql = _PG_PAGE.format(where=where)
    return conn.exec_driver_sql(sql, {**params, "limit": page.limit, "offset": page.offset}).scalar_one()


def models(session: Session) -> dict[str, str]:
    """Model key -> what pages print for it (contract/identity.py), for every model with results."""
    pairs = session.execute(select(ResultRow.model, ResultRow.model_label).distinct()).all()
    return {k: label or k for k, label in sorted(pairs)}


def methods(session: Session, model: str | None) -> list[str]:
    return sorted(session.execute(select(ResultRow.method).where(ResultRow.model == model).distinct()).scalars())


# Pages that list or compare rows read the columns they draw: the stored row (`data`, whatever a
# worker sent) is never loaded with them, and touching it raises instead of loading it row by row.
_NO_BLOB = defer(ResultRow.data, raiseload=True)


def largest_batch_rows(session: Session, f: Filter, metric: str, batch_size: int | None = None) -> list[ResultRow]:
    """One row per (job, method) for a history: the largest batch it measured `metric` at (or
    `batch_size`), oldest first. OOM rows are no point on a memory or speed curve."""
    where = [*f.rows_where(), getattr(ResultRow, metric).is_not(None), ResultRow.oom.is_(False)]
    if batch_size:
        where.append(ResultRow.batch_size == batch_size)
    largest = (
        select(ResultRow.job_id, ResultRow.method, func.max(ResultRow.batch_size).label("batch"))
        .where(*where)
        .group_by(ResultRow.job_id, ResultRow.method)
        .subquery()
    )
    on = (ResultRow.job_id == largest.c.job_id) & (ResultRow.method == largest.c.method)
    stmt = select(ResultRow).join(largest, on & (ResultRow.batch_size == largest.c.batch)).where(*where)
    stmt = stmt.options(_NO_BLOB)
    return list(session.execute(stmt.order_by(ResultRow.created_at, ResultRow.id)).scalars())


def gpu_throughput(session: Session, model: str, dtype: str, seq_len: int) -> dict[str, ResultRow]:
    """Method -> the row that says its tokens/s on a GPU for this model, dtype and length: measured
    (mode cuda) on one device, eager, without OOM or error; at the largest batch measured, the latest
    there. Nothing for a method no GPU has run: a number is never made up."""
    where = [
        ResultRow.model == model,
        ResultRow.dtype == dtype,
        ResultRow.mode == "cuda",
        ResultRow.strategy == "none",
        ResultRow.compiled.is_(False),
        ResultRow.oom.is_(False),
        ResultRow.error.is_(None),
        ResultRow.tokens_per_s.is_not(None),
        Job.spec["seq_len"].as_integer() == seq_len,
    ]
    stmt = select(ResultRow).join(Job, Job.id == ResultRow.job_id).where(*where).options(_NO_BLOB)
    stmt = stmt.order_by(ResultRow.batch_size.desc(), ResultRow.id.desc()).limit(MAX_SCANNED)
    best: dict[str, ResultRow] = {}
    for row in session.execute(stmt).scalars():
        best.setdefault(row.method, row)
    return best


def max_batches(session: Session, f: Filter, limit: int = MAX_JOBS_SCANNED) -> list[dict]:
    """The largest-batch rows of the latest `limit` succeeded jobs `f` selects (model, device,
    dtype, job ids), newest first: per job its id, dtype, the spec's seq_len, target_memory_gb,
    parallel and compile, and its `max_batch` list, each read as that member of the stored JSON."""
    spec, outcome = Job.spec, Job.outcome
    stmt = select(
        Job.id,
        Job.dtype,
        spec["seq_len"].label("seq_len"),
        spec["target_memory_gb"].label("target_memory_gb"),
        spec["parallel"].label("parallel"),
        spec["compile"].label("compile"),
        outcome["max_batch"].label("max_batch"),
    )
    stmt = stmt.where(*f.jobs_where(), Job.status == JobStatus.succeeded)
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return [dict(r) for r in session.execute(stmt).mappings() if r["max_batch"]]


# --- the comparison ---

KEY = (
    ResultRow.model,
    ResultRow.mode,
    ResultRow.dtype,
    ResultRow.strategy,
    ResultRow.world_size,
    ResultRow.compiled,
    ResultRow.method,
    ResultRow.batch_size,
)


def series(row: ResultRow) -> str:
    """The method as the compare page names a series: 'full', 'full · fsdp×8' for a parallel run,
    'full · compiled' for a torch.compile run (and 'full · fsdp×8 · compiled', were one parallel)."""
    parts = [row.method]
    if row.strategy not in (None, "none"):
        parts.append(f"{row.strategy}×{row.world_size}")
    if row.compiled:
        parts.append("compiled")
    return " · ".join(parts)


def _key(row: ResultRow, method: str | None = None) -> tuple:
    """`KEY`'s values for `row`; with `method`, those of that method's row run the same way (the
    same strategy, world_size and compiled flag): where its baseline is."""
    return (
        row.model,
        row.mode,
        row.dtype,
        row.strategy,
        row.world_size,
        bool(row.compiled),
        method or row.method,
        row.batch_size,
    )


def latest(session: Session, f: Filter) -> list[ResultRow]:
    """The latest row per (model, mode, dtype, strategy, world_size, compiled, method, batch) among
    those `f` selects."""
    newest = select(func.max(ResultRow.id)).where(*f.rows_where()).group_by(*KEY)
    return list(session.execute(select(ResultRow).where(ResultRow.id.in_(newest)).options(_NO_BLOB)).scalars())


def breakdowns(session: Session, ids: list[int]) -> dict[int, dict]:
    """Row id -> its memory breakdown (bytes by category) where it has one: the one part of the
    stored rows the compare page draws beyond the columns, read from the JSON in the database."""
    if not ids:
        return {}
    stmt = select(ResultRow.id, ResultRow.data["breakdown"]).where(ResultRow.id.in_(ids))
    return {i: b for i, b in session.execute(stmt) if isinstance(b, dict)}


def _ratio(numerator, denominator) -> float | None:
    return numerator / denominator if numerator and denominator else None


@dataclass(frozen=True)
class Compared:
    row: ResultRow
    baseline: ResultRow | None  # the baseline method's latest row at the same key and batch, compiled if this is

    @property
    def series(self) -> str:
        return series(self.row)

    @property
    def comparable(self) -> bool:
        return self.baseline is not None and not self.row.oom and not self.baseline.oom

    @property
    def memory_ratio(self) -> float | None:
        """Baseline peak / this peak: how many times less memory than the baseline."""
        return _ratio(self.baseline.peak_bytes, self.row.peak_bytes) if self.comparable else None

    @property
    def speed_ratio(self) -> float | None:
        """This tokens/s / the baseline's."""
        return _ratio(self.row.tokens_per_s, self.baseline.tokens_per_s) if self.comparable else None


def compare(session: Session, f: Filter, baseline: str) -> list[Compared]:
    """The latest rows `f` selects, each with the baseline's run the same way (the same strategy,
    world_size and compiled flag: a compiled row's ratios are to the compiled baseline row, never
    to the eager one), ordered by (model, mode, dtype, method, compiled, world_size, strategy,
    batch): a method's eager series (1-GPU, then parallel), then its compiled ones. The baseline
    must be among the methods `f` selects to be found (and, for a compiled row, have run
    compiled at that batch)."""
    rows = latest(session, f)
    by_key = {_key(r): r for r in rows}
    out = [Compared(r, by_key.get(_key(r, baseline))) for r in rows]
    return sorted(
        out,
        key=lambda c: (
            *_key(c.row)[:3],
            c.row.method,
            bool(c.row.compiled),
            c.row.world_size,
            c.row.strategy,
            c.row.batch_size,
        ),
    )
