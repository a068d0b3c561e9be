"""The queue in this process's memory, for tests and for trying a policy change without a
database. Same semantics as the SQL connector: leases, attempts, max_attempts, cancel requests,
append-only events; one re-entrant lock makes each step (and each `transaction()`) atomic."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import threading
from typing import Any

from contract.results import JobStatus

from .connector import Event, JobState, LeaseLost
from .placement import Capabilities


@dataclasses.dataclass
class _Job:
    id: str
    spec: dict
    priority: int
    max_attempts: int
    order: int  # submission order: the tie-break after priority, as created_at is in SQL
    columns: dict[str, Any]
    gpus_needed: int = 0
    status: JobStatus = JobStatus.queued
    attempts: int = 0
    cancel_requested: bool = False
    lease_owner: str | None = None
    lease_expires_at: dt.datetime | None = None
    progress: float = 0.0
    progress_message: str | None = None
    error: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    def state(self) -> JobState:
        return JobState(
            id=self.id,
            status=self.status,
            attempts=self.attempts,
            max_attempts=self.max_attempts,
            cancel_requested=self.cancel_requested,
            spec=dict(self.spec),
            lease_owner=self.lease_owner,
            lease_expires_at=self.lease_expires_at,
            progress=self.progress,
            progress_message=self.progress_message,
            error=self.error,
            gpus_needed=self.gpus_needed,
        )


class InMemoryConnector:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._jobs: dict[str, _Job] = {}
        self._events: list[Event] = []
        self._order = itertools.count()

    def transaction(self):
        return self._lock

    def record(self, job_id: str, kind: str, actor: str, attempt: int = 0, detail: str | None = None) -> None:
        with self._lock:
            self._events.append(Event(job_id, kind, actor, attempt, detail))

    def events(self, job_id: str) -> list[Event]:
        with self._lock:
            return [e for e in self._events if e.job_id == job_id]

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
        with self._lock:
            if job_id in self._jobs:
                raise KeyError(f"job {job_id} exists")  # the SQL store refuses a duplicate key too
            job = _Job(job_id, dict(spec), priority, max_attempts, next(self._order), columns, gpus_needed)
            self._jobs[job_id] = job
            self.record(job_id, "created", actor)
            return job.state()

    def get(self, job_id: str, for_update: bool = False) -> JobState | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else job.state()

    def claim(
        self, worker_id: str, now: dt.datetime, expires: dt.datetime, capabilities: Capabilities
    ) -> JobState | None:
        with self._lock:
            ready = [
                j
                for j in self._jobs.values()
                if j.status == JobStatus.queued and not j.cancel_requested and capabilities.can_run(j.gpus_needed)
            ]
            if not ready:
                return None
            job = min(ready, key=lambda j: (-j.priority, j.order, j.id))
            job.status, job.lease_owner, job.lease_expires_at = JobStatus.running, worker_id, expires
            job.attempts += 1
            job.started_at = job.started_at or now
            self.record(job.id, "claimed", worker_id, job.attempts, capabilities.describe())
            return job.state()

    def _held(self, job_id: str, worker_id: str, attempt: int) -> _Job:
        job = self._jobs.get(job_id)
        if job is None or job.status != JobStatus.running or job.lease_owner != worker_id or job.attempts != attempt:
            raise LeaseLost(f"job {job_id} attempt {attempt} is not held by worker {worker_id}")
        return job

    def held(self, job_id: str, worker_id: str, attempt: int) -> JobState:
        with self._lock:
            return self._held(job_id, worker_id, attempt).state()

    def heartbeat(
        self,
        job_id: str,
        worker_id: str,
        attempt: int,
        expires: dt.datetime,
        progress: float | None,
        message: str | None,
    ) -> JobState:
        with self._lock:
            job = self._held(job_id, worker_id, attempt)
            job.lease_expires_at = expires
            if progress is not None:
                job.progress = progress
            if message is not None:
                job.progress_message = message
            return job.state()

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
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or (only_from is not None and job.status != only_from):
                return False
            job.status, job.finished_at, job.lease_owner, job.lease_expires_at = status, now, None, None
            if status == JobStatus.failed:
                job.error = detail
            self.record(job_id, status.value, actor, attempt, detail)
            return True

    def retry(self, job_id: str, actor: str, attempt: int, detail: str) -> None:
        with self._lock:
            job = self._jobs[job_id]
            job.status, job.lease_owner, job.lease_expires_at = JobStatus.queued, None, None
            self.record(job_id, "retry", actor, attempt, detail)

    def request_cancel(self, job_id: str, actor: str) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status != JobStatus.running or job.cancel_requested:
                return False
            job.cancel_requested = True
            self.record(job_id, "cancel_requested", actor, job.attempts)
            return True

    def reap(self, now: dt.datetime) -> list[JobState]:
        with self._lock:
            expired = [
                j
                for j in self._jobs.values()
                if j.status == JobStatus.running and j.lease_expires_at is not None and j.lease_expires_at < now
            ]
            for job in expired:
                job.status, job.lease_owner, job.lease_expires_at = JobStatus.queued, None, None
                self.record(job.id, "lease_expired", "server", job.attempts, "no heartbeat before the lease ran out")
            return [job.state() for job in expired]
