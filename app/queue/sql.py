"""The queue on the app's own SQL store (the `jobs` and `job_events` tables), for PostgreSQL and
SQLite. It works inside the caller's session: a request's queue steps and its other writes (a
job's result rows) commit or roll back together."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from sqlalchemy import DateTime, bindparam, select, text, update
from sqlalchemy.orm import Session

from app.models import Job, JobEvent
from app.timestamps import as_utc
from contract.results import JobStatus

from .connector import Event, JobState, LeaseLost
from .placement import Capabilities

# One statement, so a claim is atomic. On PostgreSQL the row lock with SKIP LOCKED lets concurrent
# claimers pass over a job another one is taking instead of queueing behind it; SQLite serialises
# writers, so there the same statement is atomic without it (and has no such clause).
_CLAIM = """
    UPDATE jobs SET status = :running, lease_owner = :worker, lease_expires_at = :expires,
                    attempts = attempts + 1, started_at = COALESCE(started_at, :now)
    WHERE id = (
        SELECT id FROM jobs WHERE status = :queued AND NOT cancel_requested AND gpus_needed <= :gpus
        ORDER BY priority DESC, created_at, id LIMIT 1 {lock}
    )
    RETURNING id
    """
_ROW_LOCK = {"postgresql": "FOR UPDATE SKIP LOCKED"}
_TIMES = (bindparam("expires", type_=DateTime(timezone=True)), bindparam("now", type_=DateTime(timezone=True)))


def claim_statement(dialect: str):
    return text(_CLAIM.format(lock=_ROW_LOCK.get(dialect, ""))).bindparams(*_TIMES)


def state(job: Job) -> JobState:
    return JobState(
        id=job.id,
        status=JobStatus(job.status),
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        cancel_requested=job.cancel_requested,
        spec=job.spec,
        lease_owner=job.lease_owner,
        lease_expires_at=job.lease_expires_at and as_utc(job.lease_expires_at),  # SQLite's are naive
        progress=job.progress,
        progress_message=job.progress_message,
        error=job.error,
        gpus_needed=job.gpus_needed,
    )


class SqlConnector:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._claim = claim_statement(session.bind.dialect.name)

    def transaction(self):
        return contextlib.nullcontext()  # the session's transaction is the unit; its scope commits

    def record(self, job_id: str, kind: str, actor: str, attempt: int = 0, detail: str | None = None) -> None:
        self.session.add(JobEvent(job_id=job_id, kind=kind, actor=actor, attempt=attempt, detail=detail))

    def events(self, job_id: str) -> list[Event]:
        rows = self.session.execute(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return [Event(e.job_id, e.kind, e.actor, e.attempt, e.detail) for e in rows.scalars()]

    def enqueue(
        self,
        job_id: str,
        spec: dict,
        *,
        priority: int,
        max_attempts: int,
        actor: str,
        gpus_needed: int = 0,
        **columns: Any,
    ) -> JobState:
        job = Job(
            id=job_id,
            status=JobStatus.queued,
            spec=spec,
            priority=priority,
            gpus_needed=gpus_needed,
            max_attempts=max_attempts,
            attempts=0,
            cancel_requested=False,
            progress=0.0,
            **columns,
        )
        self.session.add(job)
        self.session.flush()
        self.record(job_id, "created", actor)
        return state(job)

    def _job(self, job_id: str, for_update: bool = False) -> Job | None:
        query = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
        return self.session.execute(query.with_for_update() if for_update else query).scalar_one_or_none()

    def get(self, job_id: str, for_update: bool = False) -> JobState | None:
        job = self._job(job_id, for_update)
        return None if job is None else state(job)

    def claim(
        self, worker_id: str, now: dt.datetime, expires: dt.datetime, capabilities: Capabilities
    ) -> JobState | None:
        params = {
            "gpus": capabilities.gpus,
            "worker": worker_id,
            "expires": expires,
            "now": now,
            "running": JobStatus.running.value,
            "queued": JobStatus.queued.value,
        }
        row = self.session.execute(self._claim, params).first()
        if row is None:
            return None
        job = self.session.get(Job, row[0], populate_existing=True)
        self.record(job.id, "claimed", worker_id, job.attempts, capabilities.describe())
        return state(job)

    def _held(self, job_id: str, worker_id: str, attempt: int) -> Job:
        job = self._job(job_id, for_update=True)
        if job is None or job.status != JobStatus.running or job.lease_owner != worker_id or job.attempts != attempt:
            raise LeaseLost(f"job {job_id} attempt {attempt} is not held by worker {worker_id}")
        return job

    def held(self, job_id: str, worker_id: str, attempt: int) -> JobState:
        return state(self._held(job_id, worker_id, attempt))

    def heartbeat(
        self,
        job_id: str,
        worker_id: str,
        attempt: int,
        expires: dt.datetime,
        progress: float | None,
        message: str | None,
    ) -> JobState:
        job = self._held(job_id, worker_id, attempt)
        job.lease_expires_at = expires
        if progress is not None:
            job.progress = progress
        if message is not None:
            job.progress_message = message
        return state(job)

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        actor: str,
        attempt: int,
        now: dt.datetime,
        detail: str | None = None,
        only_from: JobStatus | None = None,
    ) -> bool:
        error = {"error": detail} if status == JobStatus.failed else {}
        stmt = update(Job).where(Job.id == job_id)
        if only_from is not None:  # the check and the move are one statement: a racing caller moves nothing
            stmt = stmt.where(Job.status == only_from)
        moved = self.session.execute(
            stmt.values(status=status, finished_at=now, lease_owner=None, lease_expires_at=None, **error)
        ).rowcount
        if only_from is not None and not moved:
            return False
        self.record(job_id, status.value, actor, attempt, detail)
        return True

    def retry(self, job_id: str, actor: str, attempt: int, detail: str) -> None:
        self.session.execute(
            update(Job).where(Job.id == job_id).values(status=JobStatus.queued, lease_owner=None, lease_expires_at=None)
        )
        self.record(job_id, "retry", actor, attempt, detail)

    def request_cancel(self, job_id: str, actor: str) -> bool:
        flagged = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running, Job.cancel_requested.is_(False))
            .values(cancel_requested=True)
            .returning(Job.attempts)
        ).first()
        if flagged is None:
            return False
        self.record(job_id, "cancel_requested", actor, flagged.attempts)
        return True

    def reap(self, now: dt.datetime) -> list[JobState]:
        expired = self.session.execute(
            update(Job)
            .where(Job.status == JobStatus.running, Job.lease_expires_at < now)
            .values(status=JobStatus.queued, lease_owner=None, lease_expires_at=None)
            .returning(Job)
        ).scalars()
        out = [state(job) for job in expired]
        for job in out:
            self.record(job.id, "lease_expired", "server", job.attempts, "no heartbeat before the lease ran out")
        return out
