"""SQLAlchemy 2 models. Job events are append-only: every transition leaves a row."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Enum, Float, ForeignKey, Index, Integer, String, Text, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from contract.results import JobStatus


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


# Stored as the plain VARCHAR(16) it always was (no native enum type, no CHECK: no migration);
# read back as JobStatus, so Python compares members, never string literals.
STATUS = Enum(
    JobStatus, native_enum=False, create_constraint=False, length=16, values_callable=lambda e: [s.value for s in e]
)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[JobStatus] = mapped_column(STATUS, index=True, default=JobStatus.queued)
    spec: Mapped[dict] = mapped_column(JSON)
    # the model's identity (contract/identity.py): a preset, or a family with its overrides' hash
    model: Mapped[str] = mapped_column(String(64), index=True)
    model_label: Mapped[str | None] = mapped_column(String(160), nullable=True)  # what pages print (0005)
    device: Mapped[str] = mapped_column(String(16))
    dtype: Mapped[str] = mapped_column(String(16))  # "bf16-weights" is 12 (migration 0002)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # what a claiming worker must have (app/queue/placement.py); a column so the claim's one
    # statement filters on it (migration 0003)
    gpus_needed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_message: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # environment, max_batch, fidelity, convergence, errors
    outcome: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    submitted_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_jobs_claim", "status", "priority", "created_at"),)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class ResultRow(Base):
    __tablename__ = "results"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(64))  # the job's model key
    model_label: Mapped[str | None] = mapped_column(String(160), nullable=True)  # the job's label (0005)
    method: Mapped[str] = mapped_column(String(64))
    batch_size: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))
    dtype: Mapped[str] = mapped_column(String(16))  # "bf16-weights" is 12 (migration 0002)
    # how the row was run: a 1-GPU row and an 8-rank FSDP row of one method are two series (0003)
    strategy: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    world_size: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # a torch.compile run of a method is its own series too, compared with the compiled baseline (0004)
    compiled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    peak_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    first_step_peak_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    activation_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    tokens_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    oom: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    device_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    data: Mapped[dict] = mapped_column(JSON)  # the whole row as measured

    __table_args__ = (Index("ix_results_query", "model", "method", "created_at"),)


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; the token is shown once
    role: Mapped[str] = mapped_column(String(16))  # submit | worker | read
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    token_name: Mapped[str] = mapped_column(String(64))
    device_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    device_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # what it last advertised (register or claim); NULL: an older worker that never did (0003)
    gpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cpu_ranks: Mapped[int | None] = mapped_column(Integer, nullable=True)
    registered_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
