"""One timestamp format in API responses: UTC, ISO-8601, ending in "Z"."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import AfterValidator

UTC = dt.timezone.utc


def as_utc(value: dt.datetime) -> dt.datetime:
    """Aware, in UTC. SQLite hands back naive datetimes; everything this app stores is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_utc(value: dt.datetime) -> str:
    """The text pydantic writes for an aware UTC datetime, for the responses built by hand."""
    return as_utc(value).isoformat().replace("+00:00", "Z")


UTCDateTime = Annotated[dt.datetime, AfterValidator(as_utc)]
