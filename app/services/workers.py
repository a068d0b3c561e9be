"""Workers: registration, a token's own worker (or NotFound, Forbidden), what each can run (its advertised capabilities, or what an older worker's
registration implies), and, for a queued job, whether any worker seen lately could claim it."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Job, Worker, utcnow
from app.queue.placement import Capabilities, needs
from app.schemas import WorkerCapabilities, WorkerRegister
from app.services.errors import Forbidden, NotFound
from contract.results import JobStatus

# A live worker is seen at every claim (every few seconds when idle) and every heartbeat (a quarter
# lease while it runs a job); one unseen this long is taken to be gone.
SEEN_WITHIN = dt.timedelta(minutes=10)


def register(session: Session, body: WorkerRegister, token_name: str) -> Worker:
    worker = Worker(
        id=uuid.uuid4().hex[:16],
        name=body.name,
        token_name=token_name,
        device_name=body.device_name,
        device_memory_bytes=body.device_memory_bytes,
    )
    if body.capabilities is not None:
        advertise(worker, body.capabilities)
    session.add(worker)
    session.flush()
    return worker


def get_own(session: Session, worker_id: str, token_name: str, admin: bool = False) -> Worker:
    """The worker, seen now, if `token_name` registered it (an admin acts for any); NotFound or
    Forbidden otherwise."""
    worker = session.get(Worker, worker_id)
    if worker is None:
        raise NotFound(f"no worker {worker_id!r}: register first")
    if not admin and worker.token_name != token_name:
        raise Forbidden("this worker was registered with another token")
    worker.last_seen = utcnow()
    return worker


def advertise(worker: Worker, caps: WorkerCapabilities) -> None:
    worker.gpus, worker.gpu_memory_bytes, worker.cpu_ranks = caps.gpus, caps.gpu_memory_bytes, caps.cpu_ranks


def capabilities(worker: Worker) -> Capabilities:
    """What it last advertised; for a worker that never did, what its registration implies."""
    if worker.gpus is None:
        return Capabilities.legacy(worker.device_memory_bytes)
    return Capabilities(worker.gpus, worker.gpu_memory_bytes, worker.cpu_ranks or Capabilities.cpu_ranks)


def seen(session: Session, now: dt.datetime) -> list[Worker]:
    return list(session.execute(select(Worker).where(Worker.last_seen >= now - SEEN_WITHIN)).scalars())


def waiting_for(session: Session, job: Job, now: dt.datetime | None = None) -> str | None:
    """For a queued job that no worker seen within SEEN_WITHIN can run: what it waits for and why.
    None while some live worker could claim it (it is only waiting its turn) or once it left the queue."""
    if job.status != JobStatus.queued:
        return None
    live = [capabilities(w) for w in seen(session, now or utcnow())]
    if any(c.can_run(job.gpus_needed) for c in live):
        return None
    what, minutes = needs(job.spec, job.gpus_needed), int(SEEN_WITHIN.total_seconds() // 60)
    if not live:
        return f"{what}: no worker has been seen in the last {minutes} minutes"
    most = max(c.gpus for c in live)
    who = f"the {len(live)} workers seen in the last {minutes} minutes have" if len(live) > 1 else "the one worker"
    if len(live) == 1:
        who += f" seen in the last {minutes} minutes has"
    return f"{what}: {who} at most {most} GPU{'' if most == 1 else 's'}"
