"""Results across jobs: query, compare methods against a baseline, export CSV/JSON."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import select

from app.api.deps import Reader, SessionDep
from app.models import ResultRow
from app.timestamps import as_utc, iso_utc

router = APIRouter(prefix="/api/results", tags=["results"])
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
)


@dataclass(frozen=True)
class Filters:
    equal: dict  # column -> value
    methods: list[str] | None
    since: dt.datetime | None
    until: dt.datetime | None
    limit: int
    offset: int

    @property
    def model(self) -> str | None:
        return self.equal.get("model")

    @property
    def where(self) -> list:
        conditions = [getattr(ResultRow, c) == v for c, v in self.equal.items()]
        conditions += [ResultRow.method.in_(self.methods)] if self.methods else []
        conditions += [ResultRow.created_at >= self.since] if self.since else []
        conditions += [ResultRow.created_at < self.until] if self.until else []
        return conditions

    def sql(self) -> tuple[str, dict]:
        """The same conditions as driver-level SQL (column names are ours, values are bound)."""
        parts = [f"{c} = %({c})s" for c in self.equal]
        params = dict(self.equal)
        if self.methods:
            parts.append("method = ANY(%(methods)s)")
            params["methods"] = list(self.methods)
        if self.since:
            parts.append("created_at >= %(since)s")
            params["since"] = self.since
        if self.until:
            parts.append("created_at < %(until)s")
            params["until"] = self.until
        return " AND ".join(parts) or "TRUE", params


def _ordered(stmt, f: Filters):
    return (
        stmt.where(*f.where).order_by(ResultRow.created_at.desc(), ResultRow.id.desc()).limit(f.limit).offset(f.offset)
    )


def _query(session, f: Filters) -> list[ResultRow]:
    return list(session.execute(_ordered(select(ResultRow), f)).scalars())


def _flat_rows(conn, f: Filters) -> list[dict]:
    """The flat columns as plain dicts (timestamps as text): no ORM objects, no JSON blob."""
    stmt = _ordered(select(*(getattr(ResultRow, c) for c in COLUMNS)), f)
    return [{**r, "created_at": iso_utc(r["created_at"])} for r in conn.execute(stmt).mappings()]


def _json(rows: list[dict], headers: dict | None = None) -> Response:
    return Response(json.dumps(rows), media_type="application/json", headers=headers)


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


def _rows_json(conn, f: Filters) -> str:
    """The flat rows as a JSON array. On PostgreSQL the database writes the JSON and the SQL goes
    to the driver as text: building SQLAlchemy expressions and a Python object per row were
    most of this endpoint's CPU time (benchmarks/RESULTS.md). Elsewhere Python does it."""
    if conn.dialect.name != "postgresql":
        return json.dumps(_flat_rows(conn, f))
    where, params = f.sql()
    return conn.exec_driver_sql(
        _PG_PAGE.format(where=where), {**params, "limit": f.limit, "offset": f.offset}
    ).scalar_one()


async def filters(
    model: str | None = None,
    method: list[str] | None = Query(None),
    device: str | None = Query(None, description="cuda, cpu or estimate (same as mode)"),
    dtype: str | None = None,
    mode: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    job_id: str | None = Query(None, description="one job's rows"),
    limit: int = Query(1000, ge=1, le=100_000),
    offset: int = Query(0, ge=0, le=1_000_000_000),
) -> Filters:
    equal = {"job_id": job_id, "model": model, "mode": mode or device, "dtype": dtype}
    # a time without an offset is UTC, like every stored one; one with an offset is converted
    try:
        since, until = (as_utc(t) if t else None for t in (since, until))
    except OverflowError:
        raise HTTPException(422, "since/until is out of range once converted to UTC (years 1-9999)") from None
    return Filters({c: v for c, v in equal.items() if v}, method, since, until, limit, offset)


FiltersDep = Annotated[Filters, Depends(filters)]


@router.get("", response_model=list[dict])
async def query_results(request: Request, _: Reader, f: FiltersDep) -> Response:
    """Rows across jobs, newest first. The hot path: one thread hop, one autocommit round trip."""

    def read() -> Response:
        with request.app.state.db.reader() as conn:
            return Response(_rows_json(conn, f), media_type="application/json")

    return await run_in_threadpool(read)


@router.get("/compare")
def compare(session: SessionDep, _: Reader, f: FiltersDep, baseline: str = "full") -> list[dict]:
    """Per (mode, batch): each method's peak memory and tokens/s as a ratio to the baseline's."""
    model = f.model
    if not model:
        raise HTTPException(422, "compare needs ?model=<name>: ratios only make sense within one model")
    rows = _query(session, f)
    latest: dict[tuple, ResultRow] = {}
    for r in rows:  # newest first: keep the latest measurement per key
        latest.setdefault((r.mode, r.dtype, r.batch_size, r.method), r)
    out = []
    for (mode, dtype, batch, method), r in sorted(latest.items(), key=lambda kv: kv[0]):
        base = latest.get((mode, dtype, batch, baseline))
        ratio = lambda a, b: (a / b) if a and b else None  # noqa: E731
        out.append(
            {
                "model": model,
                "mode": mode,
                "dtype": dtype,
                "batch_size": batch,
                "method": method,
                "peak_bytes": r.peak_bytes,
                "tokens_per_s": r.tokens_per_s,
                "oom": r.oom,
                "memory_ratio_to_baseline": ratio(base.peak_bytes, r.peak_bytes) if base else None,
                "speed_ratio_to_baseline": ratio(r.tokens_per_s, base.tokens_per_s) if base else None,
                "baseline": baseline,
            }
        )
    return out


@router.get("/export")
def export(
    session: SessionDep, _: Reader, f: FiltersDep, format: str = Query("csv", pattern="^(csv|json)$")
) -> Response:
    rows = _flat_rows(session, f)
    if format == "json":
        return _json(rows, {"Content-Disposition": 'attachment; filename="results.json"'})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return Response(
        buf.getvalue(), media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="results.csv"'}
    )
