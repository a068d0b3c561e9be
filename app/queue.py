"""The job queue: claims are one atomic statement, leases are renewed by heartbeats, a job whose
worker vanished goes back to the queue (or fails once it has used its attempts), and every
transition appends a job event."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from .models import Job, JobEvent, ResultRow, utcnow

FINAL = ("succeeded", "failed", "cancelled")


class LeaseLost(Exception):
    """The caller no longer holds this job (lease expired and re-claimed, cancelled, or finished)."""


def record(session: Session, job_id: str, kind: str, actor: str, attempt: int = 0, detail: str | None = None) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, actor=actor, attempt=attempt, detail=detail))


def reap_expired(session: Session, now: dt.datetime) -> None:
    """Running jobs whose lease ran out: back to the queue, or failed when out of attempts."""
    expired = session.execute(
        update(Job)
        .where(Job.status == "running", Job.lease_expires_at < now)
        .values(status="queued", lease_owner=None, lease_expires_at=None)
        .returning(Job.id, Job.attempts, Job.max_attempts)
    ).all()
    for job_id, attempts, max_attempts in expired:
        record(session, job_id, "lease_expired", "server", attempts, "no heartbeat before the lease ran out")
        if attempts >= max_attempts:
            finish(
                session,
                job_id,
                "failed",
                "server",
                attempts,
                f"worker lost {attempts} times (max_attempts={max_attempts})",
            )


_CLAIM_PG = text(
    """
    UPDATE jobs SET status = 'running', lease_owner = :worker, lease_expires_at = :expires,
                    attempts = attempts + 1, started_at = COALESCE(started_at, :now)
    WHERE id = (
        SELECT id FROM jobs WHERE status = 'queued' AND NOT cancel_requested
        ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED
    )
    RETURNING id
    """
)
# SQLite serialises writers, so the same single statement is atomic without row locks.
_CLAIM_SQLITE = text(
    """
    UPDATE jobs SET status = 'running', lease_owner = :worker, lease_expires_at = :expires,
                    attempts = attempts + 1, started_at = COALESCE(started_at, :now)
    WHERE id = (
        SELECT id FROM jobs WHERE status = 'queued' AND NOT cancel_requested
        ORDER BY priority DESC, created_at, id LIMIT 1
    )
    RETURNING id
    """
)


def claim(session: Session, worker_id: str, lease_seconds: float) -> Job | None:
    now = utcnow()
    reap_expired(session, now)
    stmt = _CLAIM_PG if session.bind.dialect.name == "postgresql" else _CLAIM_SQLITE
    row = session.execute(
        stmt, {"worker": worker_id, "expires": now + dt.timedelta(seconds=lease_seconds), "now": now}
    ).first()
    if row is None:
        return None
    job = session.get(Job, row[0], populate_existing=True)
    record(session, job.id, "claimed", worker_id, job.attempts)
    return job


def held(session: Session, job_id: str, worker_id: str, attempt: int) -> Job:
    """The job, locked, if this worker still holds this attempt of it; LeaseLost otherwise."""
    job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
    if job is None or job.status != "running" or job.lease_owner != worker_id or job.attempts != attempt:
        raise LeaseLost(f"job {job_id} attempt {attempt} is not held by worker {worker_id}")
    return job


def heartbeat(
    session: Session,
    job_id: str,
    worker_id: str,
    attempt: int,
    lease_seconds: float,
    progress: float | None = None,
    message: str | None = None,
) -> Job:
    job = held(session, job_id, worker_id, attempt)
    job.lease_expires_at = utcnow() + dt.timedelta(seconds=lease_seconds)
    if progress is not None:
        job.progress = max(0.0, min(1.0, progress))
    if message is not None:
        job.progress_message = message[:200]
    return job


def finish(session: Session, job_id: str, status: str, actor: str, attempt: int, detail: str | None = None) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            status=status,
            finished_at=utcnow(),
            lease_owner=None,
            lease_expires_at=None,
            **({"error": detail} if status == "failed" else {}),
        )
    )
    record(session, job_id, status, actor, attempt, detail)


def store_result(session: Session, job: Job, result: dict, worker_id: str) -> None:
    """Results of a finished attempt; an OOM row is a measurement, so the job still succeeds."""
    env = result.get("environment") or {}
    for row in result.get("results", []):
        session.add(
            ResultRow(
                job_id=job.id,
                model=job.model,
                method=row["method"],
                batch_size=row["batch_size"],
                mode=row["mode"],
                dtype=job.dtype,
                peak_bytes=row.get("peak_bytes"),
                first_step_peak_bytes=row.get("first_step_peak_bytes"),
                activation_bytes=row.get("activation_bytes"),
                tokens_per_s=row.get("tokens_per_s"),
                oom=bool(row.get("oom")),
                error=row.get("error"),
                device_name=env.get("device_name"),
                data=row,
            )
        )
    job.outcome = {k: result.get(k) for k in ("environment", "max_batch", "fidelity", "convergence", "errors")}
    job.progress = 1.0
    errors = result.get("errors") or []
    status = "failed" if errors else "succeeded"
    finish(session, job.id, status, worker_id, job.attempts, "; ".join(e.splitlines()[0] for e in errors) or None)


def fail_attempt(session: Session, job: Job, worker_id: str, error: str, retryable: bool) -> str:
    """An attempt that could not run: infra errors go back to the queue while attempts remain."""
    if retryable and job.attempts < job.max_attempts and not job.cancel_requested:
        job.status, job.lease_owner, job.lease_expires_at = "queued", None, None
        record(session, job.id, "retry", worker_id, job.attempts, error)
        return "queued"
    finish(session, job.id, "failed", worker_id, job.attempts, error)
    return "failed"


def request_cancel(session: Session, job: Job, actor: str) -> None:
    if job.status in FINAL:
        return
    if job.status == "queued":
        finish(session, job.id, "cancelled", actor, job.attempts, "cancelled before it ran")
    else:
        job.cancel_requested = True
        record(session, job.id, "cancel_requested", actor, job.attempts)
