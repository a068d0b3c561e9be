"""API schemas, split as Create / Public / List. The job spec and the result rows are the
contract's models (`contract/`), the same ones the profiler builds and the worker posts.
Request bodies are Strict: an unknown key is an error, all of them named in one message."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.timestamps import UTCDateTime
from contract.results import JobResult, JobRows, JobStatus
from contract.spec import JobSpec, Strict


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


class JobPublic(JobSummary, JobRows):
    model_config = ConfigDict(from_attributes=True, extra="ignore")
    spec: dict
    cancel_requested: bool


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


class WorkerRegister(Strict):
    name: str = Field(min_length=1, max_length=128)
    device_name: str | None = Field(None, max_length=128)
    device_memory_bytes: int | None = Field(None, ge=0, le=2**62)


class WorkerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    device_name: str | None
    device_memory_bytes: int | None
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
