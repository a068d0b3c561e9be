"""Jobs: submit, read (or NotFound), list with a filter, cancel, re-run, and the public view that joins
a job with its stored rows. Queue transitions go through `JobQueue`; this module owns the rest of
a job's record (its columns, its outcome, its rows)."""

from __future__ import annotations

import uuid

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from app.models import Job, JobEvent, ResultRow
from app.queue import JobQueue, gpus_needed
from app.schemas import JobPublic, JobSummary
from app.services import workers
from app.services.errors import Conflict, Forbidden, Invalid, NotFound, TooMany
from app.services.filters import Filter, Page
from app.services.results import outcome_fields
from contract.results import FINAL, JobStatus
from contract.spec import JobSpec

UNFINISHED = (JobStatus.queued, JobStatus.running)


def unfinished_by(session: Session, who: str) -> int:
    """Jobs submitted by this token that are queued or running."""
    query = select(func.count()).select_from(Job).where(Job.submitted_by == who, Job.status.in_(UNFINISHED))
    return session.execute(query).scalar_one()


def check_quota(session: Session, who: str, limit: int) -> None:
    """TooMany (a 429) when `who` already has `limit` jobs queued or running (0: no limit). Checked at
    submission, so two submissions racing at the limit may both pass: a bound, not an exact count."""
    if limit <= 0:
        return
    waiting = unfinished_by(session, who)
    if waiting >= limit:
        raise TooMany(
            f"token {who!r} has {waiting} jobs queued or running; the limit is {limit} per token "
            "(WTACRS_MAX_QUEUED_PER_TOKEN). Wait for some to finish, or cancel some, then submit again",
            retry_after=60,
        )


def create(
    session: Session,
    queue: JobQueue,
    spec: JobSpec,
    who: str,
    priority: int,
    max_attempts: int,
    quota: int = 0,
) -> Job:
    """A queued job. `quota`: the most unfinished jobs `who` may have (0: no limit)."""
    check_quota(session, who, quota)
    job_id = uuid.uuid4().hex[:12]
    queue.enqueue(
        job_id,
        spec.model_dump(mode="json"),
        actor=who,
        priority=priority,
        max_attempts=max_attempts,
        gpus_needed=gpus_needed(spec),
        model=spec.model_key,
        model_label=spec.model_label,
        device=spec.device,
        dtype=spec.dtype,
        submitted_by=who,
    )
    return get_or_404(session, job_id)


def get_or_404(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id!r}")
    return job


def count(session: Session, f: Filter) -> int:
    return session.execute(select(func.count()).select_from(Job).where(*f.jobs_where())).scalar_one()


def listed(session: Session, f: Filter, page: Page) -> list[Job]:
    """Newest first, without the stored spec and outcome (a list shows neither; raiseload: a page
    that reads one anyway fails in the tests instead of loading every job's blob one by one)."""
    query = select(Job).options(defer(Job.spec, raiseload=True), defer(Job.outcome, raiseload=True))
    query = query.where(*f.jobs_where()).order_by(Job.created_at.desc(), Job.id)
    return list(session.execute(query.limit(page.limit).offset(page.offset)).scalars())


def queue_positions(session: Session, ids: list[str]) -> dict[str, int]:
    """Job id -> its place in the queue (1: the next a worker claims), for those of `ids` that are
    queued. The claim's order (app/queue/sql.py): priority, then age, then id, over the queued jobs
    not asked to cancel; every such job counts, whichever worker may take it (a job needing 8 GPUs
    ahead of a 1-GPU job counts, though a 1-GPU worker passes over it)."""
    if not ids:
        return {}
    waiting = (Job.status == JobStatus.queued, Job.cancel_requested.is_(False))
    order = (Job.priority.desc(), Job.created_at, Job.id)
    ranked = select(Job.id, func.row_number().over(order_by=order).label("position")).where(*waiting).subquery()
    rows = session.execute(select(ranked.c.id, ranked.c.position).where(ranked.c.id.in_(ids)))
    return {job_id: position for job_id, position in rows}


def recent_estimates(session: Session, limit: int) -> list[dict]:
    """The latest estimate jobs with a memory target (what the "what fits" page submits), newest
    first, with that target and the length: those members of the stored spec, never all of it, and
    only where they are numbers."""
    query = select(
        Job.id,
        Job.status,
        Job.model,
        Job.model_label,
        Job.dtype,
        Job.created_at,
        Job.spec["target_memory_gb"].label("target_gb"),
        Job.spec["seq_len"].label("seq_len"),
    )
    query = query.where(Job.device == "estimate").order_by(Job.created_at.desc(), Job.id).limit(5 * limit)
    found = [dict(r) for r in session.execute(query).mappings()]
    number = (int, float)
    found = [j for j in found if isinstance(j["target_gb"], number) and not isinstance(j["target_gb"], bool)]
    for j in found:
        j["seq_len"] = j["seq_len"] if isinstance(j["seq_len"], int) else None
    return found[:limit]


def models(session: Session) -> dict[str, str]:
    """Model key -> what pages print for it (contract/identity.py), for every model with jobs."""
    pairs = session.execute(select(Job.model, Job.model_label).distinct()).all()
    return {k: label or k for k, label in sorted(pairs)}


def events(session: Session, job_id: str) -> list[JobEvent]:
    get_or_404(session, job_id)
    return list(session.execute(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).scalars())


def check_owner(job: Job, who: str, admin: bool, action: str) -> None:
    """Forbidden (a 403) unless `who` submitted the job or is an admin: a submit token acts on its own jobs only."""
    if not admin and job.submitted_by != who:
        raise Forbidden(
            f"job {job.id} was submitted by another token; a submit token may {action} only its own jobs "
            f"(an admin token may {action} any)",
        )


def cancel(session: Session, queue: JobQueue, job_id: str, who: str, admin: bool = False) -> Job:
    """Queued jobs are cancelled at once; a running job's worker stops at its next heartbeat. Once
    however many cancels arrive (one event); Conflict (a 409) for a job that already finished."""
    check_owner(get_or_404(session, job_id), who, admin, "cancel")
    state, changed = queue.cancel(job_id, who)
    if state is None:  # deleted meanwhile
        raise NotFound(f"no job with id {job_id!r}")
    if state.status in FINAL and not changed:
        raise Conflict(f"job {job_id} already {state.status}; there is nothing to cancel")
    session.flush()
    return session.get(Job, job_id, populate_existing=True)


def rerun(
    session: Session,
    queue: JobQueue,
    job_id: str,
    who: str,
    max_attempts: int,
    quota: int = 0,
    admin: bool = False,
) -> Job:
    """A new job with the old one's spec and priority (above the default only for an admin, who
    alone may set it so), checked against today's bounds. A submit token re-runs its own jobs."""
    old = get_or_404(session, job_id)
    check_owner(old, who, admin, "re-run")
    try:
        spec = JobSpec.model_validate(old.spec)
    except ValidationError as err:  # stored before a bound it breaks was added
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:5])
        raise Invalid(
            f"job {job_id}'s spec is no longer valid ({problems}); submit a new one",
        ) from None
    priority = old.priority if admin else min(old.priority, 0)
    job = create(session, queue, spec, who, priority, max_attempts, quota)
    queue.record(job.id, "rerun_of", who, detail=old.id)
    return job


def public(session: Session, job: Job) -> JobPublic:
    """The job with its rows, as `GET /api/jobs/{id}` returns it and the job page reads it."""
    rows = session.execute(select(ResultRow.data).where(ResultRow.job_id == job.id).order_by(ResultRow.id)).scalars()
    return JobPublic(
        **JobSummary.model_validate(job).model_dump(),
        spec=job.spec,
        cancel_requested=job.cancel_requested,
        waiting_for=workers.waiting_for(session, job),
        queue_position=queue_positions(session, [job.id]).get(job.id) if job.status == JobStatus.queued else None,
        results=list(rows),
        **outcome_fields(job),
    )
