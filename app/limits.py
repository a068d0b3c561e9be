"""A cap on request body size, enforced before anything reads or parses the body."""

from __future__ import annotations

import re
from collections.abc import Iterable

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def too_large(limit: int) -> HTTPException:
    return HTTPException(
        413,
        f"request body is larger than this endpoint's limit of {limit} bytes ({limit / 2**20:g} MiB); "
        "a job spec is a few KiB, so split a larger study into several jobs",
    )


class BodySizeLimit:
    """Refuses a body over `limit` bytes (or a path's own limit in `larger`) with 413.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body is
    counted as it arrives. Without this, one client could make the event loop parse megabytes of
    JSON and every other request, /healthz included, would wait for it."""

    def __init__(self, app: ASGIApp, limit: int, larger: Iterable[tuple[str, int]] = ()) -> None:
        self.app = app
        self.limit = limit
        self.larger = [(re.compile(pattern), size) for pattern, size in larger]

    def limit_for(self, path: str) -> int:
        return next((size for pattern, size in self.larger if pattern.fullmatch(path)), self.limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self.app(scope, _refuse(limit), send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
            return message

        # An HTTPException raised while the app reads its body reaches the app's own handlers
        # (FastAPI re-raises those as they are), so the 413 is JSON on the API and a page on the site.
        await self.app(scope, counted, send)


def _refuse(limit: int) -> Receive:
    async def receive() -> Message:
        raise too_large(limit)

    return receive
