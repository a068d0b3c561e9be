"""What the services refuse, in their own words: each error carries the message a client reads (and
any headers it needs, such as Retry-After), never an HTTP status. `app/errors.py` alone maps each
class to its status, for the API (JSON) and the dashboards (a page) alike, so no service imports
the web framework."""

from __future__ import annotations

from collections.abc import Mapping


class DomainError(Exception):
    """A request the services refuse; `message` is shown to the client as it is."""

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers) if headers else None


class NotFound(DomainError):
    """No such job (or other record)."""


class Forbidden(DomainError):
    """The caller's token may not act on this record (another token's job)."""


class Conflict(DomainError):
    """The record's state rules the action out (cancelling a finished job)."""


class Invalid(DomainError):
    """The record cannot be used as it is (a stored spec that today's bounds refuse)."""


class TooMany(DomainError):
    """The caller has used up a quota; it may try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after
