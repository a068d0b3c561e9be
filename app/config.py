"""One Settings object, from the environment (WTACRS_*) or a .env file."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WTACRS_", env_file=".env", extra="ignore")

    database_url: str = Field("sqlite:///./wtacrs.db", validation_alias="DATABASE_URL")
    admin_token: str | None = None  # WTACRS_ADMIN_TOKEN: may do everything; never stored
    open_reads: bool = True  # GET endpoints without a token (set false to require one)
    lease_seconds: float = Field(60.0, gt=0)  # a claimed job returns to the queue this long after the last heartbeat
    max_attempts: int = Field(3, ge=1)
    # Request bodies above these are refused with 413 before anything parses them. A spec is a few
    # KiB; a worker's result (rows per method and batch, loss curves) can reach several MiB.
    max_body_bytes: int = Field(2**20, ge=1024)
    max_result_bytes: int = Field(32 * 2**20, ge=1024)
    # Jobs one token may have queued or running at once, so one client cannot fill the queue for
    # everyone (a 429 says so). The admin token is exempt: it is the operator's. 0: no limit.
    max_queued_per_token: int = Field(100, ge=0)


@lru_cache
def get_settings() -> Settings:
    return Settings()
