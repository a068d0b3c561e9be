"""Setup shared by the service benchmarks: a throw-away PostgreSQL schema, a free port, a server
that answers /healthz. No torch here."""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass

import httpx
import psycopg


@dataclass
class Schema:
    """A fresh schema; `url` (SQLAlchemy) and `dsn` (psycopg) both point their search_path at it."""

    name: str
    url: str
    dsn: str
    admin: psycopg.Connection

    def drop(self) -> None:
        self.admin.execute(f"DROP SCHEMA {self.name} CASCADE")
        self.admin.close()


def create_schema(db: str, prefix: str) -> Schema:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    plain = db.replace("+psycopg", "")
    admin = psycopg.connect(plain, autocommit=True)
    admin.execute(f"CREATE SCHEMA {name}")
    options = f"?options=-csearch_path%3D{name}"
    return Schema(name, db + options, plain + options, admin)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server at {base} did not answer /healthz within {seconds:g} s")
