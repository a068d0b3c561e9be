"""Jobs: submit, list, read, cancel, re-run, events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status

from app.api.bodies import JsonBody
from app.api.deps import Principal, QueueDep, Reader, SessionDep, SettingsDep, Submitter
from app.config import Settings
from app.models import Job, JobEvent
from app.schemas import EventPublic, JobList, JobPublic, JobSummary
from app.services import jobs
from app.services.filters import Filter, Page
from contract.results import JobStatus
from contract.spec import JobSpec

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
SPEC_BODY = JsonBody(JobSpec)


# OpenAPI links: what a client (and schemathesis' stateful fuzzing) may do next with a job it got
# back. Operation ids are FastAPI's, from the route functions' names and paths.
_JOB_ID = {"job_id": "$response.body#/id"}
JOB_LINKS = {
    "GetJob": {"operationId": "read_job_api_jobs__job_id__get", "parameters": _JOB_ID},
    "GetJobEvents": {"operationId": "job_events_api_jobs__job_id__events_get", "parameters": _JOB_ID},
    "CancelJob": {"operationId": "cancel_job_api_jobs__job_id__cancel_post", "parameters": _JOB_ID},
    "RerunJob": {"operationId": "rerun_job_api_jobs__job_id__rerun_post", "parameters": _JOB_ID},
    "GetJobResults": {"operationId": "query_results_api_results_get", "parameters": _JOB_ID},
    "ExportJobResults": {"operationId": "export_api_results_export_get", "parameters": _JOB_ID},
}


def _links(code: int) -> dict:
    return {"responses": {str(code): {"description": "the job", "links": JOB_LINKS}}}


DEFAULT_PRIORITY = 0


def allowed_priority(who: Principal, priority: int) -> int:
    """Above the default only for the admin token: otherwise any submitter could jump the queue."""
    if priority > DEFAULT_PRIORITY and who.role != "admin":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"priority {priority} is above the default ({DEFAULT_PRIORITY}), which needs an admin token; "
            f"a submit token may lower its jobs' priority (down to -100)",
        )
    return priority


def quota(who: Principal, settings: Settings) -> int:
    """Unfinished jobs a caller may have: the admin token is the operator's and is exempt."""
    return 0 if who.role == "admin" else settings.max_queued_per_token


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=JobPublic, openapi_extra=SPEC_BODY.openapi | _links(201)
)
def create_job(
    who: Submitter,  # first: dependencies run in order, so the body is read only for a valid token
    spec: Annotated[JobSpec, Depends(SPEC_BODY)],
    session: SessionDep,
    queue: QueueDep,
    settings: SettingsDep,
    priority: int = Query(
        DEFAULT_PRIORITY, ge=-100, le=100, description="higher runs first; above 0 needs an admin token"
    ),
) -> JobPublic:
    """Queue a profiling job. The body is the job spec itself (see the README)."""
    priority = allowed_priority(who, priority)
    job = jobs.create(session, queue, spec, who.name, priority, settings.max_attempts, quota(who, settings))
    return jobs.public(session, job)


@router.get("", response_model=JobList)
def list_jobs(
    session: SessionDep,
    _: Reader,
    status_: JobStatus | None = Query(None, alias="status"),
    model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=1_000_000_000),
) -> JobList:
    f = Filter(status=status_, model=model, mode=device, dtype=dtype)
    items = [JobSummary.model_validate(j) for j in jobs.listed(session, f, Page(limit, offset))]
    return JobList(items=items, total=jobs.count(session, f), limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobPublic)
def read_job(job_id: str, session: SessionDep, _: Reader) -> JobPublic:
    return jobs.public(session, jobs.get_or_404(session, job_id))


@router.get("/{job_id}/events", response_model=list[EventPublic])
def job_events(job_id: str, session: SessionDep, _: Reader) -> list[JobEvent]:
    return jobs.events(session, job_id)


@router.post(
    "/{job_id}/cancel",
    response_model=JobSummary,
    openapi_extra=_links(200),
    responses={403: {"description": "another token's job"}, 409: {"description": "the job already finished"}},
)
def cancel_job(job_id: str, session: SessionDep, queue: QueueDep, who: Submitter) -> Job:
    """Queued jobs are cancelled at once; a running job's worker stops at its next heartbeat (asking
    again changes nothing). A submit token cancels its own jobs, an admin any; a finished job is a 409."""
    return jobs.cancel(session, queue, job_id, who.name, admin=who.role == "admin")


@router.post(
    "/{job_id}/rerun", status_code=status.HTTP_201_CREATED, response_model=JobPublic, openapi_extra=_links(201)
)
def rerun_job(job_id: str, session: SessionDep, queue: QueueDep, who: Submitter, settings: SettingsDep) -> JobPublic:
    """A new job with the same spec. A submit token re-runs its own jobs, an admin any; the copy keeps
    the original's priority (a submit token's copy at most the default)."""
    admin = who.role == "admin"
    job = jobs.rerun(session, queue, job_id, who.name, settings.max_attempts, quota(who, settings), admin=admin)
    return jobs.public(session, job)
