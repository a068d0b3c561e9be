"""API schemas, split as Create / Public / List. The job spec and the result rows are the
contract's models (`contract/`), the same ones the profiler builds and the worker posts.
Request bodies are Strict: an unknown key is an error, all of them named in one message."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.timestamps import UTCDateTime
from contract.results import JobResult, JobRows, JobStatus
from contract.spec import MAX_CPU_RANKS, JobSpec, Strict


class JobCreate(Strict):
    spec: JobSpec
    priority: int = Field(0, ge=-100, le=100)


class JobSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    status: JobStatus
    model: str
    device: str
    dtype: str
    priority: int
    attempts: int
    progress: float
    progress_message: str | None
    submitted_by: str
    created_at: UTCDateTime
    started_at: UTCDateTime | None
    finished_at: UTCDateTime | None
    error: str | None
    gpus_needed: int = Field(0, description="GPUs a worker must have to claim it: a cuda job's world_size, else 0")


class JobPublic(JobSummary, JobRows):
    model_config = ConfigDict(from_attributes=True, extra="ignore")
    spec: dict
    cancel_requested: bool
    waiting_for: str | None = Field(
        None,
        description="a queued job that no worker seen lately can run: what it waits for, and why none "
        "of them qualifies (e.g. a cuda job with world_size 8 and workers with at most 1 GPU)",
    )


class JobList(BaseModel):
    items: list[JobSummary]
    total: int
    limit: int
    offset: int


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    at: UTCDateTime
    kind: str
    actor: str
    attempt: int
    detail: str | None


class TokenCreate(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    role: str = Field(pattern=r"^(submit|worker|read)$", description="submit | worker | read")


class TokenPublic(BaseModel):
    name: str
    role: str
    token: str | None = None  # only in the response that created it


class WorkerCapabilities(Strict):
    """What a worker can run (app/queue/placement.py has the rule)."""

    gpus: int = Field(0, ge=0, le=1024, description="CUDA GPUs it can give one job; a cuda job needs its world_size")
    gpu_memory_bytes: int | None = Field(
        None, ge=0, le=2**62, description="memory of each GPU (the smallest, where they differ); recorded"
    )
    cpu_ranks: int = Field(
        MAX_CPU_RANKS,
        ge=1,
        le=4096,
        description="gloo processes it can start for a cpu job; recorded, not a condition: any worker runs cpu jobs",
    )


class WorkerRegister(Strict):
    name: str = Field(min_length=1, max_length=128)
    device_name: str | None = Field(None, max_length=128)
    device_memory_bytes: int | None = Field(None, ge=0, le=2**62)
    capabilities: WorkerCapabilities | None = Field(
        None, description="absent (an older worker): one GPU if device_memory_bytes is given, else none"
    )


class ClaimRequest(Strict):
    """The claim's optional body; a worker sending none keeps what it registered with."""

    capabilities: WorkerCapabilities | None = None


class WorkerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    device_name: str | None
    device_memory_bytes: int | None
    gpus: int | None = None
    gpu_memory_bytes: int | None = None
    cpu_ranks: int | None = None
    last_seen: UTCDateTime


class Claimed(BaseModel):
    job_id: str
    attempt: int
    spec: dict
    lease_seconds: float


class Heartbeat(Strict):
    attempt: int = Field(ge=1, le=1_000_000)
    progress: float | None = Field(None, ge=0, le=1)
    message: str | None = Field(None, max_length=500)


class HeartbeatReply(BaseModel):
    cancel: bool
    lease_seconds: float


class PostedResult(JobRows):
    """The rows of the JobResult a worker ran. Its id, status, spec and times are the server's
    already (the job's, and its events), so they may be sent and are not read."""

    @model_validator(mode="before")
    @classmethod
    def _rows_only(cls, data):
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in _JOB_ONLY}
        return data


_JOB_ONLY = JobResult.model_fields.keys() - JobRows.model_fields.keys()


class AttemptResult(Strict):
    attempt: int = Field(ge=1, le=1_000_000)
    result: PostedResult


class AttemptFailure(Strict):
    attempt: int = Field(ge=1, le=1_000_000)
    error: str = Field(max_length=20000)
    retryable: bool = Field(description="infrastructure errors are retried; a bad spec is final")
    cancelled: bool = False
