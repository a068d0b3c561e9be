"""Tokens for submitters, workers and readers (admin only). Stored as sha256; shown once."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select

from app.api.deps import Admin, SessionDep, hash_token
from app.models import Token, utcnow
from app.schemas import TokenCreate, TokenPublic

router = APIRouter(prefix="/api/tokens", tags=["tokens"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TokenPublic)
def create_token(body: TokenCreate, session: SessionDep, _: Admin) -> TokenPublic:
    """A new token, shown once. The name of a revoked token may be given again: the new token takes
    it over, and with it what the name owns (its jobs, its workers), as the old one did."""
    old = session.execute(select(Token).where(Token.name == body.name)).scalar_one_or_none()
    if old is not None and not old.revoked:
        raise HTTPException(status.HTTP_409_CONFLICT, f"a token named {body.name!r} exists; pick another name")
    token = "wtacrs_" + secrets.token_urlsafe(32)
    if old is None:
        session.add(Token(name=body.name, token_hash=hash_token(token), role=body.role))
    else:  # the old secret's hash goes: only the new one authenticates
        old.token_hash, old.role, old.revoked, old.created_at = hash_token(token), body.role, False, utcnow()
    return TokenPublic(name=body.name, role=body.role, token=token)


@router.get("", response_model=list[TokenPublic])
def list_tokens(session: SessionDep, _: Admin) -> list[TokenPublic]:
    return [
        TokenPublic(name=t.name, role=t.role) for t in session.execute(select(Token).where(~Token.revoked)).scalars()
    ]


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(name: str, session: SessionDep, _: Admin) -> None:
    token = session.execute(select(Token).where(Token.name == name)).scalar_one_or_none()
    if token is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no token named {name!r}")
    token.revoked = True
