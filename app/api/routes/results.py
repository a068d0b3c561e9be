"""Results across jobs: query, compare methods against a baseline, export CSV/JSON."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app import finite
from app.api.deps import Reader, SessionDep
from app.csv_export import csv_response
from app.finite import finite_text
from app.services import results
from app.services.filters import Filter, Page
from app.timestamps import as_utc

router = APIRouter(prefix="/api/results", tags=["results"])
# the flat columns that are numbers: one stored non-finite (before they were refused) reads null
NUMBERS = ("peak_bytes", "first_step_peak_bytes", "activation_bytes", "tokens_per_s")


async def row_filter(
    model: str | None = None,
    method: list[str] | None = Query(None),
    device: str | None = Query(None, description="cuda, cpu or estimate (same as mode)"),
    dtype: str | None = None,
    mode: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    job_id: str | None = Query(None, description="one job's rows"),
    strategy: str | None = Query(
        None, pattern="^(none|ddp|fsdp)$", description="how the rows ran: none (one device), ddp or fsdp"
    ),
    world_size: int | None = Query(None, ge=1, le=1024, description="ranks the rows ran on (1: one device)"),
    compiled: bool | None = Query(
        None, description="true: the rows run under torch.compile (spec compile: true); false: the eager ones"
    ),
) -> Filter:
    # a time without an offset is UTC, like every stored one; one with an offset is converted
    try:
        since, until = (as_utc(t) if t else None for t in (since, until))
    except OverflowError:
        raise HTTPException(422, "since/until is out of range once converted to UTC (years 1-9999)") from None
    return Filter(
        model=model,
        methods=method,
        mode=mode or device,
        dtype=dtype,
        job_ids=[job_id],
        since=since,
        until=until,
        strategy=strategy,
        world_size=world_size,
        compiled=compiled,
    )


async def page(limit: int = Query(1000, ge=1, le=100_000), offset: int = Query(0, ge=0, le=1_000_000_000)) -> Page:
    return Page(limit, offset)


FilterDep = Annotated[Filter, Depends(row_filter)]
PageDep = Annotated[Page, Depends(page)]


@router.get("", response_model=list[dict])
async def query_results(request: Request, _: Reader, f: FilterDep, p: PageDep) -> Response:
    """Rows across jobs, newest first. The hot path: one thread hop, one autocommit round trip."""

    def read() -> Response:
        with request.app.state.db.reader() as conn:
            # finite_text: a row stored before non-finite numbers were refused reads null, not NaN
            text = finite_text(results.rows_json(conn, f, p), numbers=NUMBERS)
            return Response(text, media_type="application/json")

    return await run_in_threadpool(read)


@router.get("/compare")
def compare(session: SessionDep, _: Reader, f: FilterDep, p: PageDep, baseline: str = "full") -> list[dict]:
    """Per (mode, dtype, batch, method, strategy, world_size, compiled): the latest row's peak
    memory and tokens/s, and their ratios to the baseline method's latest row run the same way
    (None for OOM rows or without a baseline): a compiled row's to the compiled baseline row's.
    `series` names each: "full", "full · fsdp×8" for 8 FSDP ranks, "full · compiled" for torch.compile.
    limit/offset page these entries; the ratios are computed over all of them first."""
    if not f.model:
        raise HTTPException(422, "compare needs ?model=<name>: ratios only make sense within one model")
    compared = results.compare(session, f, baseline)
    compared.sort(
        key=lambda c: (c.row.mode, c.row.dtype, c.row.batch_size, c.row.method, c.row.compiled, c.row.world_size)
    )
    return [
        {
            "model": c.row.model,
            "model_label": c.row.model_label or c.row.model,
            "mode": c.row.mode,
            "dtype": c.row.dtype,
            "batch_size": c.row.batch_size,
            "method": c.row.method,
            "strategy": c.row.strategy,
            "world_size": c.row.world_size,
            "compiled": c.row.compiled,
            "series": c.series,
            "peak_bytes": c.row.peak_bytes,
            "tokens_per_s": c.row.tokens_per_s,
            "oom": c.row.oom,
            "memory_ratio_to_baseline": c.memory_ratio,
            "speed_ratio_to_baseline": c.speed_ratio,
            "baseline": baseline,
        }
        for c in compared[p.offset : p.offset + p.limit]
    ]


@router.get("/export")
def export(
    session: SessionDep, _: Reader, f: FilterDep, p: PageDep, format: str = Query("csv", pattern="^(csv|json)$")
) -> Response:
    rows = results.flat_rows(session, f, p)
    if format == "json":
        headers = {"Content-Disposition": 'attachment; filename="results.json"'}
        return Response(finite.dumps(rows), media_type="application/json", headers=headers)
    # cells a spreadsheet would run are escaped; a legacy non-finite number is an empty cell
    return csv_response(finite.finite(rows), results.COLUMNS, "results.csv")
