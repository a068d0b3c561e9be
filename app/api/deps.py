"""Dependencies: the database session and who is calling (bearer tokens)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import Token
from app.queue import JobQueue, SqlConnector


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Cheap dependencies are `async def`: FastAPI runs a sync one in the thread pool, a hop that costs
# more than the work here. Only database I/O goes to a thread.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.db.scope() as session:
        yield session


# scope="function": commit before the response is sent, so a 201/204 means the write is durable
# (the default "request" scope would commit after the client already saw success).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def get_queue(session: SessionDep, settings: SettingsDep) -> JobQueue:
    """The queue over this request's session: its steps commit with the request's other writes."""
    return JobQueue(SqlConnector(session), settings.lease_seconds)


QueueDep = Annotated[JobQueue, Depends(get_queue)]


@dataclass(frozen=True)
class Principal:
    name: str
    role: str  # admin | submit | worker | read | anonymous


def _lookup_token(db, token: str) -> tuple[str, str, bool] | None:
    with db.reader() as conn:
        query = select(Token.name, Token.role, Token.revoked).where(Token.token_hash == hash_token(token))
        return conn.execute(query).first()


# Declares bearer auth in the OpenAPI schema (so /docs has an Authorize button and "Try it out"
# sends the token); it decides nothing: with auto_error=False it never refuses, and get_principal
# reads the header itself, so a missing, malformed or unknown token is answered as before.
bearer = HTTPBearer(auto_error=False, description="a token from /api/tokens, or WTACRS_ADMIN_TOKEN")


async def get_principal(
    request: Request,
    settings: SettingsDep,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
) -> Principal:
    header = request.headers.get("authorization")
    if not header:
        return Principal("anonymous", "anonymous")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Authorization must be 'Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if settings.admin_token and hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        return Principal("admin", "admin")
    found = await run_in_threadpool(_lookup_token, request.app.state.db, token)
    if found is None or found.revoked:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"}
        )
    return Principal(found.name, found.role)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(*roles: str):
    """A dependency that lets through the admin token and tokens with one of `roles` (none: the
    admin token only); its errors name the role needed."""
    needed = " or ".join(roles + ("admin",)) if roles else "admin (WTACRS_ADMIN_TOKEN)"

    async def check(principal: PrincipalDep) -> Principal:
        if principal.role == "admin" or principal.role in roles:
            return principal
        if principal.role == "anonymous":
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                f"this needs a token with role {needed}",
                headers={"WWW-Authenticate": "Bearer"},
            )
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"role '{principal.role}' may not do this; it needs a token with role {needed}"
        )

    return check


async def reader(principal: PrincipalDep, settings: SettingsDep) -> Principal:
    if settings.open_reads or principal.role != "anonymous":
        return principal
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "reads need a token (WTACRS_OPEN_READS is off)",
        headers={"WWW-Authenticate": "Bearer"},
    )


Submitter = Annotated[Principal, Depends(require("submit"))]
WorkerAuth = Annotated[Principal, Depends(require("worker"))]
Admin = Annotated[Principal, Depends(require())]
Reader = Annotated[Principal, Depends(reader)]
