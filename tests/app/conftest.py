import os
import uuid

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

ADMIN = "test-admin-token"
PG_URL = os.environ.get("WTACRS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_schema_url():
    """A fresh schema on the test PostgreSQL, or a skip that says why."""
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed")
    plain = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        conn = psycopg.connect(plain, autocommit=True, connect_timeout=3)
    except Exception as err:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {err}")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    return conn, schema, f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/test.db"
        return
    conn, schema, url = postgres_schema_url()
    yield url
    conn.execute(f"DROP SCHEMA {schema} CASCADE")
    conn.close()


@pytest.fixture
def make_client(database_url):
    clients = []

    def make(**settings):
        cfg = Settings(database_url=database_url, admin_token=ADMIN, **settings)
        client = TestClient(create_app(cfg))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


def auth(token=ADMIN):
    return {"Authorization": f"Bearer {token}"}
