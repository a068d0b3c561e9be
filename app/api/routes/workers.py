"""Worker endpoints: register, claim, heartbeat (with progress), post a result or a failure."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response, status

from app import queue
from app.api.bodies import JsonBody
from app.api.deps import SessionDep, SettingsDep, WorkerAuth
from app.models import Worker, utcnow
from app.schemas import AttemptFailure, AttemptResult, Claimed, Heartbeat, HeartbeatReply, WorkerPublic, WorkerRegister

router = APIRouter(prefix="/api/workers", tags=["workers"])
RESULT_BODY = JsonBody(AttemptResult)
RESULT_PATH = r"/api/workers/[^/]+/jobs/[^/]+/result"  # takes larger bodies (Settings.max_result_bytes)


def _worker(session, worker_id: str, who) -> Worker:
    worker = session.get(Worker, worker_id)
    if worker is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no worker {worker_id!r}: register first")
    if who.role != "admin" and worker.token_name != who.name:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this worker was registered with another token")
    worker.last_seen = utcnow()
    return worker


def _held(session, worker_id: str, job_id: str, attempt: int, who):
    """The job if this worker still holds this attempt; 409 otherwise (it was re-claimed or finished)."""
    _worker(session, worker_id, who)
    try:
        return queue.held(session, job_id, worker_id, attempt)
    except queue.LeaseLost as err:
        raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from None


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model=WorkerPublic)
def register(body: WorkerRegister, session: SessionDep, who: WorkerAuth) -> Worker:
    worker = Worker(
        id=uuid.uuid4().hex[:16],
        name=body.name,
        token_name=who.name,
        device_name=body.device_name,
        device_memory_bytes=body.device_memory_bytes,
    )
    session.add(worker)
    session.flush()
    return worker


@router.post("/{worker_id}/claim", response_model=Claimed, responses={204: {"description": "nothing queued"}})
def claim(worker_id: str, session: SessionDep, who: WorkerAuth, settings: SettingsDep):
    _worker(session, worker_id, who)
    job = queue.claim(session, worker_id, settings.lease_seconds)
    if job is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return Claimed(job_id=job.id, attempt=job.attempts, spec=job.spec, lease_seconds=settings.lease_seconds)


@router.post("/{worker_id}/jobs/{job_id}/heartbeat", response_model=HeartbeatReply)
def heartbeat(
    worker_id: str, job_id: str, body: Heartbeat, session: SessionDep, who: WorkerAuth, settings: SettingsDep
) -> HeartbeatReply:
    _worker(session, worker_id, who)
    try:
        job = queue.heartbeat(
            session, job_id, worker_id, body.attempt, settings.lease_seconds, body.progress, body.message
        )
    except queue.LeaseLost as err:
        raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from None
    return HeartbeatReply(cancel=job.cancel_requested, lease_seconds=settings.lease_seconds)


@router.post(
    "/{worker_id}/jobs/{job_id}/result", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=RESULT_BODY.openapi
)
def post_result(
    worker_id: str,
    job_id: str,
    who: WorkerAuth,  # before the body: a result may be megabytes, read only for a worker token
    body: Annotated[AttemptResult, Depends(RESULT_BODY)],
    session: SessionDep,
) -> Response:
    job = _held(session, worker_id, job_id, body.attempt, who)
    if not isinstance(body.result.get("results", []), list):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "result.results must be a list of rows")
    try:
        queue.store_result(session, job, body.result, worker_id)
    except (KeyError, TypeError) as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, f"malformed result row: missing {err}") from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{worker_id}/jobs/{job_id}/fail")
def post_failure(worker_id: str, job_id: str, body: AttemptFailure, session: SessionDep, who: WorkerAuth) -> dict:
    job = _held(session, worker_id, job_id, body.attempt, who)
    if body.cancelled:
        queue.finish(session, job.id, "cancelled", worker_id, job.attempts, "stopped by its worker on request")
        return {"status": "cancelled"}
    return {"status": queue.fail_attempt(session, job, worker_id, body.error, body.retryable)}
