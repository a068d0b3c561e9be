"""Error responses: JSON for the API, an HTML page for the dashboards, and never the client's
whole input echoed back (a 5 MB string in a bad field once came back as a 5 MB error body), nor
a NaN or Infinity it sent (JSON has neither: quoting one back made the 422 itself fail, a 500)."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from app.queue import LeaseLost
from app.services.errors import Conflict, DomainError, Forbidden, Invalid, NotFound, TooMany
from app.web.errors import error_page

EXCERPT_CHARS = 200  # of an offending value, quoted back so the client can find it
MESSAGE_CHARS = 1000  # our own messages list what is allowed; none needs more
SHOWN_ERRORS = 20  # a body with 100k unknown keys has 100k errors; the first few say what is wrong
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=repr)


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> Any:
    """`value` when its JSON is short; otherwise the first `limit` characters of that JSON and '…'.
    The encoder is lazy, so a 600 000-item list costs as much as its first few items."""
    if isinstance(value, (bytes, bytearray)):  # a body that is not UTF-8: pydantic quotes the bytes
        value = bytes(value[: limit * 4]).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # "nan", "inf": JSON has no such number
    size = 0
    pieces = []
    try:
        for piece in _ENCODER.iterencode(value):
            pieces.append(piece)
            size += len(piece)
            if size > limit:
                return "".join(pieces)[:limit] + "…"
    except (TypeError, ValueError, RecursionError):  # an integer too long to print, a cycle
        return f"<{type(value).__name__}>"
    return _quoted_non_finite(value)


def _quoted_non_finite(value: Any) -> Any:
    """A short input with its NaN and Infinity floats as strings (the encoder above wrote them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _quoted_non_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_quoted_non_finite(v) for v in value]
    return value


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def short_errors(errors: list[dict]) -> list[dict]:
    """The first SHOWN_ERRORS errors with loc, msg, type and an excerpt of the input."""
    return [
        {
            "type": e.get("type"),
            "loc": [_clip(p, EXCERPT_CHARS) if isinstance(p, str) else p for p in e.get("loc", ())],
            "msg": _clip(str(e.get("msg", "")), MESSAGE_CHARS),
            "input": excerpt(e.get("input")),
        }
        for e in errors[:SHOWN_ERRORS]
    ]


def is_page(request: Request) -> bool:
    """Dashboard paths answer errors with a page; the API, health check and schema with JSON."""
    path = request.url.path
    return not (path == "/api" or path.startswith(("/api/", "/healthz", "/openapi.json")))


async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
    errors = exc.errors()
    shown = short_errors(list(errors))
    if is_page(request):
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in shown]
        return error_page(422, "This page's parameters are not valid:", lines + _more(len(errors)))
    body: dict[str, Any] = {"detail": jsonable_encoder(shown)}
    if len(errors) > len(shown):
        body["errors_not_shown"] = len(errors) - len(shown)
    return JSONResponse(body, status_code=422)


def _more(total: int) -> list[str]:
    return [f"… and {total - SHOWN_ERRORS} more"] if total > SHOWN_ERRORS else []


async def on_http_error(request: Request, exc: HTTPException) -> Response:
    if not is_page(request):
        return await http_exception_handler(request, exc)
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(jsonable_encoder(exc.detail))
    return error_page(exc.status_code, _clip(detail, MESSAGE_CHARS), headers=getattr(exc, "headers", None))


# The one place a refusal from the services (app/services/errors.py) or the queue gets its status.
# A class not listed takes its nearest listed base's.
DOMAIN_STATUS: dict[type[Exception], int] = {
    DomainError: 400,
    NotFound: 404,
    Forbidden: 403,
    Conflict: 409,
    Invalid: 422,
    TooMany: 429,
    LeaseLost: 409,  # the attempt was re-claimed, cancelled or finished: the worker must drop it
}


def as_http(exc: Exception) -> HTTPException:
    """The HTTPException a domain error answers as: its status, its message, its headers."""
    status = next(DOMAIN_STATUS[c] for c in type(exc).__mro__ if c in DOMAIN_STATUS)
    return HTTPException(status, str(exc), headers=getattr(exc, "headers", None))


async def on_domain_error(request: Request, exc: Exception) -> Response:
    return await on_http_error(request, as_http(exc))


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    for domain_error in (DomainError, LeaseLost):
        app.add_exception_handler(domain_error, on_domain_error)
