"""Worker endpoints: register, claim, heartbeat (with progress), post a result or a failure. A
LeaseLost from the queue (the worker no longer holds the job) answers 409, in app/errors.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from app.api.bodies import JsonBody
from app.api.deps import QueueDep, SessionDep, WorkerAuth
from app.models import Job, Worker
from app.schemas import (
    AttemptFailure,
    AttemptResult,
    Claimed,
    ClaimRequest,
    Heartbeat,
    HeartbeatReply,
    WorkerPublic,
    WorkerRegister,
)
from app.services import results, workers
from contract.results import posted_context
from contract.rows import POSTED, RowBounds

router = APIRouter(prefix="/api/workers", tags=["workers"])
RESULT_BODY = JsonBody(AttemptResult)
RESULT_PATH = r"/api/workers/[^/]+/jobs/[^/]+/result"  # takes larger bodies (Settings.max_result_bytes)


def _worker(session, worker_id: str, who) -> Worker:
    return workers.get_own(session, worker_id, who.name, admin=who.role == "admin")


def _stored_spec(db, job_id: str) -> dict | None:
    with db.reader() as conn:
        return conn.execute(select(Job.spec).where(Job.id == job_id)).scalar_one_or_none()


async def posted_result(request: Request, job_id: str, who: WorkerAuth) -> AttemptResult:
    """The result body, validated against its job: rows of the job's methods only, batch sizes up
    to its largest, as many rows as its spec produces, every field declared and bounded
    (contract/rows.py). Read only for a worker token; a refused body is a 422 naming the field and
    changes nothing, so the worker still holds the job and may post again."""
    spec = await run_in_threadpool(_stored_spec, request.app.state.db, job_id)
    # no such job: checked without a spec's bounds, then refused as not held (409: drop it)
    context = posted_context(spec) if spec is not None else {POSTED: RowBounds()}
    raw = await request.body()  # the size limit (app.limits) applies while this reads
    return await run_in_threadpool(RESULT_BODY.parse, raw, context)


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model=WorkerPublic)
def register(body: WorkerRegister, session: SessionDep, who: WorkerAuth) -> Worker:
    return workers.register(session, body, who.name)


@router.post(
    "/{worker_id}/claim", response_model=Claimed, responses={204: {"description": "nothing queued it can run"}}
)
def claim(worker_id: str, session: SessionDep, queue: QueueDep, who: WorkerAuth, body: ClaimRequest | None = None):
    """The next job this worker can run: a cuda job only where it advertises world_size GPUs or more
    (no body, or no capabilities: what it registered with)."""
    worker = _worker(session, worker_id, who)
    if body is not None and body.capabilities is not None:
        workers.advertise(worker, body.capabilities)  # kept, so a queued job can say who could run it
    job = queue.claim(worker_id, workers.capabilities(worker))
    if job is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return Claimed(job_id=job.id, attempt=job.attempts, spec=job.spec, lease_seconds=queue.lease_seconds)


@router.post("/{worker_id}/jobs/{job_id}/heartbeat", response_model=HeartbeatReply)
def heartbeat(
    worker_id: str, job_id: str, body: Heartbeat, session: SessionDep, queue: QueueDep, who: WorkerAuth
) -> HeartbeatReply:
    _worker(session, worker_id, who)
    job = queue.heartbeat(job_id, worker_id, body.attempt, body.progress, body.message)  # LeaseLost: a 409
    return HeartbeatReply(cancel=job.cancel_requested, lease_seconds=queue.lease_seconds)


@router.post(
    "/{worker_id}/jobs/{job_id}/result", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=RESULT_BODY.openapi
)
def post_result(
    worker_id: str,
    job_id: str,
    who: WorkerAuth,  # before the body: a result may be megabytes, read only for a worker token
    body: Annotated[AttemptResult, Depends(posted_result)],
    session: SessionDep,
    queue: QueueDep,
) -> Response:
    _worker(session, worker_id, who)
    queue.held(job_id, worker_id, body.attempt)  # a stale attempt's rows are never written
    results.save(session, job_id, body.result)  # the rows were validated with the body
    queue.complete(job_id, worker_id, body.attempt, body.result.errors)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{worker_id}/jobs/{job_id}/fail")
def post_failure(
    worker_id: str, job_id: str, body: AttemptFailure, session: SessionDep, queue: QueueDep, who: WorkerAuth
) -> dict:
    _worker(session, worker_id, who)
    if body.cancelled:
        return {"status": queue.stopped(job_id, worker_id, body.attempt)}
    return {"status": queue.fail_attempt(job_id, worker_id, body.attempt, body.error, body.retryable)}
