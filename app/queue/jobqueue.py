"""`JobQueue`: the queue's rules, over any `Connector`.

- A claim first reaps: a job whose worker vanished (no heartbeat before its lease ran out) goes
  back to the queue, or fails once it has used its attempts.
- A result ends the job: succeeded, or failed when the run reported errors. An OOM is a
  measurement, not an error, so a job whose rows say OOM still succeeds.
- A failed attempt is retried while attempts remain when the worker calls it retryable (an
  infrastructure error); a bad spec, a cancelled job or the last attempt make it final.
- Cancelling a queued job ends it at once; a running one is flagged for its worker to stop."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

from app.models import utcnow
from contract.results import FINAL, JobStatus

from .connector import Connector, Event, JobState
from .placement import NO_GPU, Capabilities

PROGRESS_MESSAGE_CHARS = 200  # the column's size


class JobQueue:
    def __init__(
        self, connector: Connector, lease_seconds: float = 60.0, clock: Callable[[], dt.datetime] = utcnow
    ) -> None:
        self.connector = connector
        self.lease_seconds = lease_seconds
        self.clock = clock  # tests move time instead of sleeping through leases

    def _lease_until(self, now: dt.datetime) -> dt.datetime:
        return now + dt.timedelta(seconds=self.lease_seconds)

    def enqueue(
        self,
        job_id: str,
        spec: dict,
        *,
        actor: str,
        priority: int = 0,
        max_attempts: int = 3,
        gpus_needed: int = 0,
        **columns,
    ) -> JobState:
        return self.connector.enqueue(
            job_id, spec, priority=priority, max_attempts=max_attempts, actor=actor, gpus_needed=gpus_needed, **columns
        )

    def get(self, job_id: str) -> JobState | None:
        return self.connector.get(job_id)

    def record(self, job_id: str, kind: str, actor: str, attempt: int = 0, detail: str | None = None) -> None:
        self.connector.record(job_id, kind, actor, attempt, detail)

    def events(self, job_id: str) -> list[Event]:
        return self.connector.events(job_id)

    def reap(self) -> list[JobState]:
        """Expired leases back to the queue; those out of attempts failed. Returns the expired."""
        now = self.clock()
        with self.connector.transaction():
            expired = self.connector.reap(now)
            for job in expired:
                if job.attempts >= job.max_attempts:
                    detail = f"worker lost {job.attempts} times (max_attempts={job.max_attempts})"
                    self.connector.finish(job.id, JobStatus.failed, "server", job.attempts, now, detail)
        return expired

    def claim(self, worker_id: str, capabilities: Capabilities = NO_GPU) -> JobState | None:
        """The next job this worker can run (no GPU unless it says so: placement.py)."""
        with self.connector.transaction():
            self.reap()
            now = self.clock()
            return self.connector.claim(worker_id, now, self._lease_until(now), capabilities)

    def held(self, job_id: str, worker_id: str, attempt: int) -> JobState:
        return self.connector.held(job_id, worker_id, attempt)

    def heartbeat(
        self, job_id: str, worker_id: str, attempt: int, progress: float | None = None, message: str | None = None
    ) -> JobState:
        """Renews the lease; the answer's `cancel_requested` tells the worker to stop."""
        progress = None if progress is None else max(0.0, min(1.0, progress))
        message = None if message is None else message[:PROGRESS_MESSAGE_CHARS]
        expires = self._lease_until(self.clock())
        return self.connector.heartbeat(job_id, worker_id, attempt, expires, progress, message)

    def complete(self, job_id: str, worker_id: str, attempt: int, errors: Iterable[str] = ()) -> JobStatus:
        """The attempt's result was stored: the job ends, failed only if the run reported errors."""
        errors = list(errors)
        with self.connector.transaction():
            self.connector.held(job_id, worker_id, attempt)
            status = JobStatus.failed if errors else JobStatus.succeeded
            self.connector.finish(job_id, status, worker_id, attempt, self.clock(), _first_lines(errors))
        return status

    def fail_attempt(self, job_id: str, worker_id: str, attempt: int, error: str, retryable: bool) -> JobStatus:
        """An attempt that could not run. Returns where the job went (queued or failed)."""
        with self.connector.transaction():
            job = self.connector.held(job_id, worker_id, attempt)
            if retryable and job.attempts < job.max_attempts and not job.cancel_requested:
                self.connector.retry(job_id, worker_id, attempt, error)
                return JobStatus.queued
            self.connector.finish(job_id, JobStatus.failed, worker_id, attempt, self.clock(), error)
            return JobStatus.failed

    def stopped(self, job_id: str, worker_id: str, attempt: int) -> JobStatus:
        """The worker stopped a held job because it was asked to cancel."""
        with self.connector.transaction():
            self.connector.held(job_id, worker_id, attempt)
            detail = "stopped by its worker on request"
            self.connector.finish(job_id, JobStatus.cancelled, worker_id, attempt, self.clock(), detail)
        return JobStatus.cancelled

    def cancel(self, job_id: str, actor: str) -> tuple[JobState | None, bool]:
        """(the job as it is now, whether this call changed it): a queued job is cancelled, a running
        one flagged for its worker to stop. Each is one conditional step, so of many concurrent
        cancels one changes the job and writes the event; the others change nothing (a finished job,
        or a running one already flagged, is left as it is). (None, False) when there is no such job."""
        with self.connector.transaction():
            job = self.connector.get(job_id)
            if job is None or job.status in FINAL:
                return job, False
            detail = "cancelled before it ran"
            now = self.clock()
            changed = self.connector.finish(
                job_id, JobStatus.cancelled, actor, job.attempts, now, detail, only_from=JobStatus.queued
            ) or self.connector.request_cancel(job_id, actor)  # claimed meanwhile: running now
            return self.connector.get(job_id), changed


def _first_lines(errors: list[str]) -> str | None:
    """One line per error: the job's error column is a summary; the full texts stay in its outcome."""
    return "; ".join(e.splitlines()[0] if e.strip() else e for e in errors) or None
