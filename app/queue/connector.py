"""What a queue backend must do: the `Connector` protocol, the job snapshots it hands back, and the
one error a worker sees when it no longer holds a job.

A connector moves jobs between states and appends an event for every move; it decides nothing.
When to retry, when to give up and what a result means is `JobQueue`'s (app/queue/jobqueue.py),
so every backend gets the same rules by implementing these primitives alone."""

from __future__ import annotations

import datetime as dt
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from contract.results import JobStatus

from .placement import Capabilities


class LeaseLost(Exception):
    """The caller no longer holds this job (lease expired and re-claimed, cancelled, or finished)."""


@dataclass(frozen=True)
class JobState:
    """A job as the queue sees it, detached from any session: safe to keep after a commit."""

    id: str
    status: JobStatus
    attempts: int
    max_attempts: int
    cancel_requested: bool = False
    spec: dict[str, Any] = field(default_factory=dict)  # opaque to the queue: what a worker runs
    lease_owner: str | None = None
    lease_expires_at: dt.datetime | None = None
    progress: float = 0.0
    progress_message: str | None = None
    error: str | None = None
    gpus_needed: int = 0  # a worker advertising fewer GPUs never claims it (placement.py)


@dataclass(frozen=True)
class Event:
    job_id: str
    kind: str
    actor: str
    attempt: int = 0
    detail: str | None = None


class Connector(Protocol):
    """The primitives. Each is atomic on its own; `transaction()` makes several one unit, which is
    how `JobQueue` keeps "reap, then fail the ones out of attempts" from interleaving with a claim."""

    def transaction(self) -> AbstractContextManager[None]: ...

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
        """A new queued job (`columns`: what the store keeps beside it) and its `created` event."""

    def get(self, job_id: str, for_update: bool = False) -> JobState | None:
        """`for_update`: locked for this unit of work, so no claim takes it meanwhile."""

    def claim(
        self, worker_id: str, now: dt.datetime, expires: dt.datetime, capabilities: Capabilities
    ) -> JobState | None:
        """The next queued job not asked to cancel that the worker's capabilities can run (priority,
        then oldest), running under a lease for this worker, attempts + 1, in one atomic step, with
        a `claimed` event that records the capabilities; None when there is none."""

    def held(self, job_id: str, worker_id: str, attempt: int) -> JobState:
        """The job, locked for this unit of work, if this worker holds this attempt; LeaseLost otherwise."""

    def heartbeat(
        self,
        job_id: str,
        worker_id: str,
        attempt: int,
        expires: dt.datetime,
        progress: float | None,
        message: str | None,
    ) -> JobState:
        """Renew the lease (and record progress) of a held job; LeaseLost otherwise."""

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
        """A final status, lease released; a failed job keeps `detail` as its error. With
        `only_from`, only a job still in that status moves, checked and moved in one step: True
        when it moved, and the event is written only then (so two racing cancels write one)."""

    def retry(self, job_id: str, actor: str, attempt: int, detail: str) -> None:
        """Back to the queue, lease released, a `retry` event; attempts are kept."""

    def request_cancel(self, job_id: str, actor: str) -> bool:
        """Flag a running job so its worker stops at its next heartbeat, in one step: True when
        this call flagged it (its event written), False when it is not running or already flagged."""

    def reap(self, now: dt.datetime) -> list[JobState]:
        """Running jobs whose lease ran out before `now`: back to the queue with a `lease_expired`
        event, in one step. Returns them as they are now (queued, attempts unchanged)."""

    def record(self, job_id: str, kind: str, actor: str, attempt: int = 0, detail: str | None = None) -> None: ...

    def events(self, job_id: str) -> list[Event]: ...
