"""HTML dashboards: jobs list with a submit form, job page, compare, history ("what fits" is
`fits.py`). plotly.js is served from the installed plotly package, so the pages work with no internet."""

from __future__ import annotations

import dataclasses
import json
import math
import urllib.parse
from pathlib import Path
from typing import Annotated, Literal

import plotly
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BeforeValidator, Field

from app.api.deps import Reader, SessionDep
from app.csv_export import csv_response
from app.services import jobs as job_service
from app.services import results
from app.services.filters import Filter, Page
from app.web import charts, pivot
from app.web.batch_charts import group_largest_batches
from app.web.job_charts import JOB_CHARTS, WIDE_CHARTS, memory_vs_batch
from app.web.pages import GIB, HERE, page
from app.web.pages import page_json as page_json  # re-exported: the tests check it here
from app.web.parallel_charts import parallel_label
from contract.measurements import MEASUREMENTS
from contract.results import JobStatus
from contract.rows import TrialRow

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
router = APIRouter(include_in_schema=False)
_EXAMPLE = HERE.parents[1] / "examples" / "minimal.json"
EXAMPLE_SPEC = _EXAMPLE.read_text() if _EXAMPLE.exists() else "{}"  # prefills the submit form
METRICS = {"peak_bytes": 1 / GIB, "first_step_peak_bytes": 1 / GIB, "activation_bytes": 1 / GIB, "tokens_per_s": 1}
JOBS_PER_PAGE = 50
MAX_JOBS_PER_PAGE = 200
JOBS_REFRESH_MS = 5000  # the jobs list fetches itself again this often (dash.js)
DTYPES = ("fp32", "bf16", "fp16", "bf16-weights")  # the filters' choices: JobSpec's dtypes
MAX_BATCH_CHARTS = 6  # largest-batch charts on the compare page, the latest conditions first
# the filter forms send "" for "any"
_ANY = BeforeValidator(lambda value: value or None)
AnyStatus = Annotated[JobStatus | None, _ANY]
AnyStrategy = Annotated[Literal["none", "ddp", "fsdp"] | None, _ANY]
AnyWorldSize = Annotated[Annotated[int, Field(ge=1, le=1024)] | None, _ANY]
AnyCompiled = Annotated[bool | None, _ANY]  # "true": torch.compile rows, "false": eager ones


@router.get("/static/plotly.min.js")
def plotly_js() -> FileResponse:
    return FileResponse(PLOTLY_JS, media_type="application/javascript", headers={"Cache-Control": "max-age=86400"})


@router.get("/favicon.ico")
@router.get("/favicon.svg")
def favicon() -> FileResponse:
    """The site's icon (browsers ask /favicon.ico of every page that names none, and got a 404)."""
    return FileResponse(
        HERE / "static" / "favicon.svg", media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"}
    )


@router.get("/static/{name}")
def static(name: str) -> FileResponse:
    path = HERE / "static" / name
    if name not in {"dash.js", "style.css", "favicon.svg"} or not path.exists():
        raise HTTPException(404, f"no static file {name!r}")
    return FileResponse(path)


def _models(session, chosen: str | None) -> tuple[dict[str, str], str | None]:
    """Models that have results (key -> label), and the one to show (the chosen one, else the first)."""
    models = results.models(session)
    return models, chosen or next(iter(models), None)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    session: SessionDep,
    _: Reader,
    status: AnyStatus = None,
    model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    page_number: int = Query(1, alias="page", ge=1, le=1_000_000, description="1: the newest jobs"),
    per_page: int = Query(JOBS_PER_PAGE, ge=1, le=MAX_JOBS_PER_PAGE),
) -> HTMLResponse:
    """The jobs, newest first, a page at a time; queued ones with their place in the queue. The page
    fetches itself again every JOBS_REFRESH_MS (dash.js) and swaps in the new list."""
    f = Filter(status=status, model=model, mode=device, dtype=dtype)
    listed = job_service.listed(session, f, Page(per_page, (page_number - 1) * per_page))
    total = job_service.count(session, f)
    filters = {"status": status, "model": model, "device": device, "dtype": dtype}

    def link(number: int) -> str:
        query = {k: v for k, v in filters.items() if v} | {"page": number}
        if per_page != JOBS_PER_PAGE:
            query["per_page"] = per_page
        return "/jobs?" + urllib.parse.urlencode(query)

    first = (page_number - 1) * per_page + 1
    return page(
        request,
        "jobs.html",
        jobs=listed,
        positions=job_service.queue_positions(session, [j.id for j in listed if j.status == JobStatus.queued]),
        models=job_service.models(session),
        statuses=list(JobStatus),
        dtypes=DTYPES,
        filters=filters,
        example=EXAMPLE_SPEC,
        total=total,
        shown=(first, first + len(listed) - 1),
        previous=link(page_number - 1) if page_number > 1 else None,
        next=link(page_number + 1) if first - 1 + len(listed) < total else None,
        first_page=link(1) if page_number > 1 and not listed else None,
        refresh_ms=JOBS_REFRESH_MS,
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, session: SessionDep, _: Reader) -> HTMLResponse:
    job = job_service.public(session, job_service.get_or_404(session, job_id))
    env = job.environment.model_dump(exclude_none=True) if job.environment else {}
    target = job.spec.get("target_memory_gb")
    device_bytes = target * GIB if target else env.get("device_total_bytes") if job.device == "cuda" else None
    figures = {}
    for measurement in MEASUREMENTS.values():  # each chart once, where its measurement has rows
        if getattr(job, measurement.field):
            for name in measurement.charts:
                if name not in figures and (figure := JOB_CHARTS[name](job, device_bytes)) is not None:
                    figures[name] = figure
    return page(
        request,
        "job.html",
        job=job,
        figures=figures,
        panels=list(JOB_CHARTS),
        wide=WIDE_CHARTS,
        parallel=parallel_label(job.spec),
        spec=json.dumps(job.spec, indent=2),
        environment=json.dumps(env, indent=2),
    )


def compare_filter(
    model: str | None = Query(None, description="the page: the first model with rows when omitted; the CSV: all"),
    method: list[str] | None = Query(None),
    dtype: str | None = None,
    mode: str | None = None,
    strategy: AnyStrategy = None,
    world_size: AnyWorldSize = None,
    compiled: AnyCompiled = None,
) -> Filter:
    """The compare page's selection, which its CSV export repeats (the page links it with its query)."""
    return Filter(
        model=model, methods=method, mode=mode, dtype=dtype, strategy=strategy, world_size=world_size, compiled=compiled
    )


CompareFilter = Annotated[Filter, Depends(compare_filter)]


def _bytes(breakdown: dict | None, category: str) -> float:
    """One category of a stored breakdown; 0 where it is missing or not a number."""
    value = (breakdown or {}).get(category, 0)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else 0


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request,
    session: SessionDep,
    _: Reader,
    f: CompareFilter,
    baseline: str = "full",
    jobs: str | None = Query(None, description="comma-separated job ids to compare"),
) -> HTMLResponse:
    models, model = _models(session, f.model)
    f = dataclasses.replace(f, model=model, job_ids=[j.strip() for j in (jobs or "").split(",")])
    compared = results.compare(session, f, baseline)
    rows = [c.row for c in compared]
    table = pivot.pivot(compared)
    batches = sorted({r.batch_size for r in rows})
    lines = [
        {"mode": k[1], "dtype": k[2], "series": k[3], "cells": [cells.get(b) for b in batches]}
        for k, cells in table.items()
    ]
    pairs = []  # where a spec ran both estimated and measured: (key, batch, measured cell, estimated cell)
    for key, cells in table.items():
        if key[1] == "estimate":
            continue
        estimated = table.get((key[0], "estimate", key[2], key[3]), {})
        for b, cell in cells.items():
            est = estimated.get(b)
            if est is not None and cell.row.peak_bytes and est.row.peak_bytes:
                pairs.append((key, b, cell, est))
    # the breakdowns of those rows only, out of the stored JSON; every other number is a column
    parts = results.breakdowns(session, [c.row.id for _, _, *cs in pairs for c in cs])
    reconcile = [  # the estimate's error per category
        {
            "method": key[3],
            "batch": b,
            "measured": key[1],
            "peak_error": est.row.peak_bytes / cell.row.peak_bytes - 1,
            "categories": {
                c: (_bytes(parts.get(est.row.id), c) - _bytes(parts.get(cell.row.id), c)) / GIB
                for c in charts.CATEGORIES
            },
        }
        for key, b, cell, est in pairs
    ]
    # the chart's points from the columns (no stored row is read or validated again)
    by_mode = [
        TrialRow.model_construct(
            method=f"{results.series(r)} [{r.mode}]",
            batch_size=r.batch_size,
            mode=r.mode,
            peak_bytes=r.peak_bytes,
            oom=r.oom,
        )
        for r in rows
    ]
    figure = memory_vs_batch(by_mode, None, f.mode or "mixed") if rows else None
    groups = _batch_groups(session, f) if model else []
    figures = {"compare": figure} | {f"max_batch_{i}": g.figure() for i, g in enumerate(groups[:MAX_BATCH_CHARTS])}
    return page(
        request,
        "compare.html",
        models=models,
        model=model,
        batches=batches,
        table=lines,
        reconcile=reconcile,
        baseline=baseline,
        figures=figures,
        dtypes=DTYPES,
        batch_groups=groups,
        batch_charts=min(len(groups), MAX_BATCH_CHARTS),
        filters={
            "dtype": f.dtype,
            "mode": f.mode,
            "jobs": jobs or "",
            "method": list(f.methods),
            "strategy": f.strategy,
            "world_size": f.world_size,
            "compiled": f.compiled,
        },
        methods=results.methods(session, model),
        export_query=request.url.query,
    )


def _batch_groups(session, f: Filter) -> list:
    """The largest batch per method across the model's succeeded jobs, a group per set of conditions
    (mode, memory target, length, dtype, parallel, compiled), with the compare page's filters."""
    groups = group_largest_batches(results.max_batches(session, f), f.methods)
    return [
        g
        for g in groups
        if f.strategy in (None, g.strategy)
        and f.world_size in (None, g.world_size)
        and f.compiled in (None, g.compiled)
    ]


@router.get("/compare.csv")
def compare_csv(session: SessionDep, _: Reader, f: CompareFilter, baseline: str = "full") -> Response:
    """The pivot (model x series x batch, ratio to the baseline) as CSV."""
    table = pivot.pivot(results.compare(session, f, baseline))
    return csv_response(pivot.csv_rows(table, baseline), pivot.CSV_COLUMNS, "pivot.csv")


@router.get("/history", response_class=HTMLResponse)
def history_page(
    request: Request,
    session: SessionDep,
    _: Reader,
    model: str | None = None,
    metric: str = "peak_bytes",
    batch_size: int | None = Query(None, ge=1, le=1_000_000),
) -> HTMLResponse:
    if metric not in METRICS:
        raise HTTPException(422, f"metric {metric!r} is not one of {sorted(METRICS)}")
    models, model = _models(session, model)
    # no model yet (an empty store): no rows, rather than every model's
    rows = results.largest_batch_rows(session, Filter(model=model), metric, batch_size) if model else []
    points = [
        {
            # a compiled or parallel run, another dtype or an estimate beside a measurement: its own line
            "method": f"{results.series(r)} · {r.dtype} · {r.mode}",
            "batch": r.batch_size,
            "at": r.created_at.isoformat(),
            "value": getattr(r, metric) * METRICS[metric],
            "job_id": r.job_id,
        }
        for r in rows
    ]
    unit = "GiB" if METRICS[metric] != 1 else ""
    figure = charts.history(points, f"{metric} {unit}".strip())
    return page(
        request,
        "history.html",
        models=models,
        model=model,
        metric=metric,
        metrics={m: charts.METRICS[m][0] for m in sorted(METRICS)},
        batch_size=batch_size,
        figure=figure,
        count=len(points),
    )
