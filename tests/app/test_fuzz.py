"""Fuzz every operation of the OpenAPI schema (schemathesis strategies): whatever the input, no 5xx."""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402

pytestmark = pytest.mark.slow
ADMIN = "fuzz-admin"


def test_no_operation_answers_5xx(database_url):
    """On both stores: PostgreSQL refuses values SQLite takes (NUL in text, out-of-range integers)."""
    from fastapi.testclient import TestClient

    app = create_app(Settings(database_url=database_url, admin_token=ADMIN))
    with TestClient(app):  # runs the migrations
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 15
        failures = []

        def fuzz(op):
            @given(case=op.as_strategy())
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case):
                for headers in ({"Authorization": f"Bearer {ADMIN}"}, {}):
                    response = case.call(headers=headers)
                    if response.status_code >= 500:
                        failures.append(f"{op.label}: {response.status_code} {response.text[:200]} for {case!r:.300}")

            run()

        for op in operations:
            fuzz(op)
        assert not failures, "\n".join(failures[:10])
