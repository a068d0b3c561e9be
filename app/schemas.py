"""API schemas, split as Create / Public / List. The job spec and the result rows are the
contract's models (`contract/`), the same ones the profiler builds and the worker posts.
Request bodies are Strict: an unknown key is an error, all of them named in one message; and a
NaN or Infinity is an error in any of their floats (JSON has neither)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.timestamps import UTCDateTime
from contract.results import JobResult, JobRows, JobStatus
from contract.rows import clip
from contract.spec import MAX_CPU_RANKS, JobSpec, Strict

FAILURE_CHARS = 20_000  # of a failed attempt's error


class Body(Strict):
    """A request body: unknown keys and non-finite numbers are errors."""

    model_config = ConfigDict(allow_inf_nan=False)


class JobCreate(Body):
    spec: JobSpec
    priority: int = Field(0, ge=-100, le=100)


class JobSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    status: JobStatus
    model: str = Field(description="the model's identity: a preset, or `family~hash` of a family with overrides")
    model_label: str | None = Field(None, description="the model as pages name it, e.g. `bert (hidden 256, 4 layers)`")
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
    queue_position: int | None = Field(
        None,
        description="a queued job: its place in the claim order (1: the next a worker claims; priority, then "
        "age), counting every queued job ahead of it whichever worker may take it",
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


class TokenCreate(Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    role: str = Field(pattern=r"^(submit|worker|read)$", description="submit | worker | read")


class TokenPublic(BaseModel):
    name: str
    role: str
    token: str | None = None  # only in the response that created it


class WorkerCapabilities(Body):
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


class WorkerRegister(Body):
    name: str = Field(min_length=1, max_length=128)
    device_name: str | None = Field(None, max_length=128)
    device_memory_bytes: int | None = Field(None, ge=0, le=2**62)
    capabilities: WorkerCapabilities | None = Field(
        None, description="absent (an older worker): one GPU if device_memory_bytes is given, else none"
    )


class ClaimRequest(Body):
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


class Heartbeat(Body):
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


class AttemptResult(Body):
    attempt: int = Field(ge=1, le=1_000_000)
    result: PostedResult


class AttemptFailure(Body):
    attempt: int = Field(ge=1, le=1_000_000)
    error: str = Field(description=f"kept up to {FAILURE_CHARS} characters, then cut with a marker")
    retryable: bool = Field(description="infrastructure errors are retried; a bad spec is final")
    cancelled: bool = False

    @field_validator("error")
    @classmethod
    def _cut(cls, v: str) -> str:
        # a worker's failure is reported however long its message: refusing it would leave the job
        # running until its lease ran out
        return clip(v.replace("\x00", "\ufffd"), FAILURE_CHARS)
