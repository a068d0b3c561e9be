"""Stateful fuzzing of the jobs API (issue #16): schemathesis chains calls along the OpenAPI links
(create -> get / events / cancel / rerun / results / export; rerun and cancel link on), a worker
rule claims and finishes jobs in between, and after every step: no 5xx, a cancelled job never
later runs or succeeds, and a re-run never loses or changes its original. On both stores."""

from __future__ import annotations

import collections

import pytest

schemathesis = pytest.importorskip("schemathesis")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import rule  # noqa: E402

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402
from app.models import Base  # noqa: E402
from tests.app.conftest import ADMIN, auth  # noqa: E402
from tests.app.spec_strategies import specs  # noqa: E402

pytestmark = pytest.mark.slow
ROW = {"method": "full", "batch_size": 1, "mode": "estimate", "peak_bytes": 1000, "oom": False}
TALLY: dict[str, collections.Counter] = {}


def valid_specs_too(context, strategy):
    """Half of the generated job bodies are specs the API accepts, so the links have jobs to follow."""
    if context.operation is not None and context.operation.label == "POST /api/jobs":
        return st.one_of(strategy, specs("estimate"))
    return strategy


def test_stateful_jobs_api(database_url):
    store = "sqlite" if database_url.startswith("sqlite") else "postgres"
    app = create_app(Settings(database_url=database_url, admin_token=ADMIN, lease_seconds=60))
    tally = TALLY.setdefault(store, collections.Counter())
    with TestClient(app, headers=auth()) as client:
        # the jobs and the results: the worker protocol is driven by the worker rule below (a
        # fuzzed worker id is a 404), tokens by tests/app/test_fuzz.py
        schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(path_regex="^/api/(jobs|results)")
        schema.hook("before_generate_body")(valid_specs_too)
        links = schema.as_state_machine()

        class Jobs(links):
            def setup(self):
                # every scenario starts from an empty store: a replayed scenario must see what the
                # first run saw, or hypothesis cannot shrink a failure (and calls the test flaky)
                with app.state.db.scope() as session:
                    for table in reversed(Base.metadata.sorted_tables):
                        session.execute(table.delete())
                self.cancelled: set[str] = set()
                self.reruns: dict[str, str] = {}  # new id -> original id
                self.originals: dict[str, dict] = {}  # original id -> its spec and rows at the re-run
                self.worker = client.post("/api/workers/register", json={"name": "stateful"}).json()["id"]

            def get_call_kwargs(self, case):
                return {"headers": auth()}

            def validate_response(self, response, case, additional_checks=None, **kwargs):
                tally["calls"] += 1
                tally[f"{response.status_code // 100}xx"] += 1
                assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:300]}"
                if case.operation.label == "POST /api/jobs" and response.status_code == 201:
                    tally["jobs created"] += 1
                if case.operation.label == "POST /api/jobs/{job_id}/rerun" and response.status_code == 201:
                    original = case.path_parameters["job_id"]
                    new = response.json()
                    self.reruns[new["id"]] = original
                    self.originals.setdefault(original, self.snapshot(original))
                    assert new["spec"] == self.originals[original]["spec"]
                    tally["reruns"] += 1
                if case.operation.label == "POST /api/jobs/{job_id}/cancel" and response.status_code == 200:
                    tally["cancels"] += 1
                    if response.json()["status"] == "cancelled":
                        self.cancelled.add(response.json()["id"])
                self.check_job_invariants()

            def snapshot(self, job_id: str) -> dict:
                job = client.get(f"/api/jobs/{job_id}").json()
                return {"spec": job["spec"], "status": job["status"], "rows": len(job["results"])}

            @rule(action=st.sampled_from(["result", "result", "retryable", "final", "heartbeat", "abandon"]))
            def a_worker_takes_a_job(self, action):
                """Claims the next job and finishes it one way or another (a cancel request is obeyed)."""
                r = client.post(f"/api/workers/{self.worker}/claim")
                assert r.status_code in (200, 204), r.text
                if r.status_code == 204:
                    return
                job_id, attempt = r.json()["job_id"], r.json()["attempt"]
                assert job_id not in self.cancelled, f"cancelled job {job_id} was claimed"
                tally["claims"] += 1
                path = f"/api/workers/{self.worker}/jobs/{job_id}"
                beat = client.post(f"{path}/heartbeat", json={"attempt": attempt, "progress": 0.5})
                assert beat.status_code == 200, beat.text
                if beat.json()["cancel"]:
                    r = client.post(
                        f"{path}/fail", json={"attempt": attempt, "error": "x", "retryable": False, "cancelled": True}
                    )
                    assert r.json() == {"status": "cancelled"}, r.text
                    self.cancelled.add(job_id)
                elif action == "result":
                    row = {**ROW, "method": r.json()["spec"]["methods"][0]}  # rows of the job's own methods
                    r = client.post(f"{path}/result", json={"attempt": attempt, "result": {"results": [row]}})
                    assert r.status_code == 204, r.text
                elif action in ("retryable", "final"):
                    body = {"attempt": attempt, "error": "worker trouble", "retryable": action == "retryable"}
                    assert client.post(f"{path}/fail", json=body).status_code == 200
                elif action == "heartbeat":
                    return  # still running: a later cancel flags it, and a later claim skips it
                # "abandon": never heard from again (the lease is longer than the test)
                self.check_job_invariants()

            def check_job_invariants(self):
                for job_id in self.cancelled:
                    job = client.get(f"/api/jobs/{job_id}").json()
                    assert job["status"] == "cancelled", f"cancelled job {job_id} is now {job['status']}"
                for new, original in self.reruns.items():
                    r = client.get(f"/api/jobs/{original}")
                    assert r.status_code == 200, f"re-run {new} lost its original {original}"
                    now, then = self.snapshot(original), self.originals[original]
                    assert now["spec"] == then["spec"] and now["rows"] >= then["rows"], (original, then, now)
                    events = client.get(f"/api/jobs/{new}/events").json()
                    assert any(e["kind"] == "rerun_of" and e["detail"] == original for e in events), events

        Jobs.run(
            settings=settings(
                max_examples=250 if store == "sqlite" else 200,
                stateful_step_count=10,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
        )
    print(f"\n{store}: {dict(tally)}")
    assert tally["jobs created"] > 0 and tally["reruns"] > 0 and tally["cancels"] > 0, dict(tally)
