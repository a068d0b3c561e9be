"""Results across jobs: query, compare methods against a baseline, export CSV/JSON."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response
from sqlalchemy import select

from app.api.deps import Reader, SessionDep
from app.models import ResultRow

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


def _where(model, method, device, dtype, mode, since, until, job_id=None) -> list:
    conditions = (
        ResultRow.job_id == job_id if job_id else None,
        ResultRow.model == model if model else None,
        ResultRow.method.in_(method) if method else None,
        ResultRow.mode == (mode or device) if (mode or device) else None,
        ResultRow.dtype == dtype if dtype else None,
        ResultRow.created_at >= since if since else None,
        ResultRow.created_at < until if until else None,
    )
    return [c for c in conditions if c is not None]


def _ordered(stmt, f: Filters):
    return (
        stmt.where(*f.where).order_by(ResultRow.created_at.desc(), ResultRow.id.desc()).limit(f.limit).offset(f.offset)
    )


def _query(session, f: Filters) -> list[ResultRow]:
    return list(session.execute(_ordered(select(ResultRow), f)).scalars())


def _flat_rows(session, f: Filters) -> list[dict]:
    """The flat columns as plain dicts: no ORM objects, no JSON blob (the hot path)."""
    stmt = _ordered(select(*(getattr(ResultRow, c) for c in COLUMNS)), f)
    return [dict(r) for r in session.execute(stmt).mappings()]


def _json(rows: list[dict], headers: dict | None = None) -> Response:
    return Response(json.dumps(rows, default=str), media_type="application/json", headers=headers)


class Filters:
    def __init__(
        self,
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
    ):
        self.model, self.limit, self.offset = model, limit, offset
        self.where = _where(model, method, device, dtype, mode, since, until, job_id)


FiltersDep = Annotated[Filters, Depends()]


@router.get("", response_model=list[dict])
def query_results(session: SessionDep, _: Reader, f: FiltersDep) -> Response:
    return _json(_flat_rows(session, f))


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
