"""Jobs: submit, list, read, cancel, re-run, events."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import ValidationError
from sqlalchemy import func, select

from app import queue
from app.api.bodies import JsonBody
from app.api.deps import Reader, SessionDep, SettingsDep, Submitter
from app.models import Job, JobEvent, ResultRow
from app.schemas import EventPublic, JobList, JobPublic, JobSummary
from profiler.spec import JobSpec

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
SPEC_BODY = JsonBody(JobSpec)


def new_job(session, spec: JobSpec, who: str, priority: int, max_attempts: int) -> Job:
    job = Job(
        id=uuid.uuid4().hex[:12],
        status="queued",
        spec=spec.model_dump(mode="json"),
        model=spec.model_name,
        device=spec.device,
        dtype=spec.dtype,
        priority=priority,
        max_attempts=max_attempts,
        submitted_by=who,
    )
    session.add(job)
    session.flush()
    queue.record(session, job.id, "created", who)
    return job


def job_filters(status: str | None, model: str | None, device: str | None, dtype: str | None) -> list:
    """WHERE conditions for the jobs list (API and dashboard)."""
    pairs = ((Job.status, status), (Job.model, model), (Job.device, device), (Job.dtype, dtype))
    return [column == value for column, value in pairs if value]


def get_job(session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job with id {job_id!r}")
    return job


def public(session, job: Job) -> JobPublic:
    rows = session.execute(select(ResultRow.data).where(ResultRow.job_id == job.id).order_by(ResultRow.id)).scalars()
    outcome = job.outcome or {}
    return JobPublic(
        **JobSummary.model_validate(job).model_dump(),
        spec=job.spec,
        cancel_requested=job.cancel_requested,
        results=list(rows),
        max_batch=outcome.get("max_batch") or [],
        fidelity=outcome.get("fidelity") or [],
        convergence=outcome.get("convergence") or [],
        environment=outcome.get("environment"),
        errors=outcome.get("errors") or [],
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic, openapi_extra=SPEC_BODY.openapi)
def create_job(
    who: Submitter,  # first: dependencies run in order, so the body is read only for a valid token
    spec: Annotated[JobSpec, Depends(SPEC_BODY)],
    session: SessionDep,
    settings: SettingsDep,
    priority: int = Query(0, ge=-100, le=100),
) -> JobPublic:
    """Queue a profiling job. The body is the job spec itself (see the README)."""
    return public(session, new_job(session, spec, who.name, priority, settings.max_attempts))


@router.get("", response_model=JobList)
def list_jobs(
    session: SessionDep,
    _: Reader,
    status_: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = Query(None, alias="status"),
    model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=1_000_000_000),
) -> JobList:
    where = job_filters(status_, model, device, dtype)
    total = session.execute(select(func.count()).select_from(Job).where(*where)).scalar_one()
    jobs = session.execute(
        select(Job).where(*where).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    ).scalars()
    return JobList(items=[JobSummary.model_validate(j) for j in jobs], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobPublic)
def read_job(job_id: str, session: SessionDep, _: Reader) -> JobPublic:
    return public(session, get_job(session, job_id))


@router.get("/{job_id}/events", response_model=list[EventPublic])
def job_events(job_id: str, session: SessionDep, _: Reader) -> list[JobEvent]:
    get_job(session, job_id)
    return list(session.execute(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).scalars())


@router.post("/{job_id}/cancel", response_model=JobSummary)
def cancel_job(job_id: str, session: SessionDep, who: Submitter) -> Job:
    """Queued jobs are cancelled at once; a running job's worker stops at its next heartbeat."""
    job = get_job(session, job_id)
    queue.request_cancel(session, job, who.name)
    session.flush()
    session.refresh(job)
    return job


@router.post("/{job_id}/rerun", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def rerun_job(job_id: str, session: SessionDep, who: Submitter, settings: SettingsDep) -> JobPublic:
    old = get_job(session, job_id)
    try:
        spec = JobSpec.model_validate(old.spec)
    except ValidationError as err:  # stored before a bound it breaks was added
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:5])
        raise HTTPException(
            422,
            f"job {job_id}'s spec is no longer valid ({problems}); submit a new one",
        ) from None
    job = new_job(session, spec, who.name, old.priority, settings.max_attempts)
    queue.record(session, job.id, "rerun_of", who.name, detail=old.id)
    return public(session, job)
