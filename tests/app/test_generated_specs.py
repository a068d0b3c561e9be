"""Generated valid specs, submitted through the API and run by a real worker (issue #16).

Each spec comes from `spec_strategies.specs` (the method grammar, the measurements valid for the
device, edge batch sizes and lengths, a family with 64 overrides, every dtype), is submitted with
POST /api/jobs and run by `profiler.worker.run_claimed` over HTTP. For each one: the job ends
(`succeeded`, or `failed` with a one-line message, never a traceback), nothing stays `running`, the
same worker takes the next job, and GET /api/jobs/{id} validates against `contract.results`.
Specs that validate but cannot run either fail saying what to change or are refused with a 422.
"""

from __future__ import annotations

import collections
import threading

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from app.config import Settings
from app.main import create_app
from contract.measurements import MEASUREMENTS
from contract.results import FINAL, JobRows, JobStatus
from contract.spec import MAX_LAYERS, JobSpec
from profiler.worker import Api, run_claimed, serve_forever
from tests.app.conftest import ADMIN, auth
from tests.app.live_server import live_server
from tests.app.spec_strategies import specs

pytestmark = pytest.mark.slow
SETTINGS = dict(max_examples=0, deadline=None, database=None, suppress_health_check=list(HealthCheck))
TINY = {"model": "bert-tiny", "methods": ["full"], "seq_len": 8, "batch_sizes": [1], "measurements": ["peak_memory"]}


class Harness:
    """One app, one registered worker that runs every job in this process, and a tally."""

    def __init__(self, database_url: str) -> None:
        self.client = TestClient(create_app(Settings(database_url=database_url, admin_token=ADMIN)), headers=auth())
        self.client.__enter__()
        self.api = Api("http://testserver", ADMIN)
        self.api.http = self.client  # the worker's HTTP client is the test client: same requests, no socket
        self.worker = self.client.post("/api/workers/register", json={"name": "fuzz-worker"}).json()["id"]
        self.outcomes: collections.Counter = collections.Counter()
        self.failures: collections.Counter = collections.Counter()

    def close(self) -> None:
        self.client.__exit__(None, None, None)

    def submit(self, spec: dict) -> str:
        r = self.client.post("/api/jobs", json=spec)
        assert r.status_code == 201, (spec, r.text)
        return r.json()["id"]

    def run_next(self, job_id: str, isolate: bool = False) -> dict:
        r = self.client.post(f"/api/workers/{self.worker}/claim")
        assert r.status_code == 200 and r.json()["job_id"] == job_id, r.text
        outcome = run_claimed(self.api, self.worker, r.json(), isolate=isolate)  # the worker survives: no raise
        job = self.client.get(f"/api/jobs/{job_id}").json()
        self.check(job, outcome)
        return job

    def check(self, job: dict, outcome: str) -> None:
        status = JobStatus(job["status"])
        assert status in FINAL and outcome == status.value, (outcome, job["status"], job.get("error"))
        running = self.client.get("/api/jobs", params={"status": "running"}).json()["total"]
        assert running == 0, "a job stayed running after its worker returned"
        JobRows.model_validate({k: job[k] for k in JobRows.model_fields if k in job})
        spec = JobSpec.model_validate(job["spec"])
        if status == JobStatus.failed:
            error = job["error"]
            assert error and "\n" not in error and "Traceback" not in error, error
            assert job["errors"], "a failed job lists its errors"
            self.failures[_reason(error)] += 1
        else:
            assert job["error"] is None and not job["errors"], job["errors"]
            if any(MEASUREMENTS[m].field == "results" for m in spec.measurements):
                # one trial row per (method, batch size), stored once
                assert len(job["results"]) == len(spec.methods) * len(spec.batch_sizes), job["results"]
        self.outcomes[status.value] += 1


def _reason(error: str) -> str:
    """`method batch 2: CheckpointError: ...` -> `CheckpointError: ...` (first 80 characters)."""
    return error.split(": ", 1)[-1][:80]


@pytest.fixture
def harness(database_url):
    h = Harness(database_url)
    yield h
    print(f"\noutcomes {dict(h.outcomes)}; failure reasons {dict(h.failures)}")
    assert h.client.post(f"/api/workers/{h.worker}/claim").status_code == 204  # nothing left queued
    h.close()


def test_generated_estimate_specs_run_to_an_end(harness, database_url):
    examples = 14 if database_url.startswith("sqlite") else 6

    @given(spec=specs("estimate"))
    @settings(**{**SETTINGS, "max_examples": examples})
    def run(spec):
        harness.run_next(harness.submit(spec))

    run()
    assert sum(harness.outcomes.values()) >= examples


def test_generated_cpu_specs_run_to_an_end(harness, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("cpu runs are measured once, on SQLite; the store's part is the same as for estimate")

    @given(spec=specs("cpu"))
    @settings(**{**SETTINGS, "max_examples": 4})
    def run(spec):
        harness.run_next(harness.submit(spec))

    run()


# --- specs that validate but cannot run as asked: each case decided, fail clearly or 422 ---


@pytest.mark.parametrize(
    "change,status,says",
    [
        # the server cannot know a model's positions without transformers: the worker says
        ({"seq_len": 131072, "device": "estimate"}, "failed", "seq_len=131072 exceeds this model's 512 positions"),
        (
            {"model": {"family": "llama", "overrides": {"max_position_embeddings": 16}}, "seq_len": 32},
            "failed",
            "seq_len=32 exceeds this model's 16 positions",
        ),
        # a trace has no memory: a million-sample batch is an estimate like any other, and over
        # a target it is an OOM row, a measurement, not a failure
        ({"batch_sizes": [1_000_000], "device": "estimate", "target_memory_gb": 80}, "succeeded", None),
        (
            {"model": {"family": "bert", "overrides": {"hidden_size": 30, "num_attention_heads": 4}}},
            "failed",
            "hidden size (30) is not a multiple of the number of attention heads (4)",
        ),
    ],
)
def test_valid_but_unrunnable_specs_fail_saying_why(harness, change, status, says):
    job = harness.run_next(harness.submit({**TINY, "device": "cpu", **change}))
    assert job["status"] == status, job
    if says:
        assert says in job["error"], job["error"]
    elif "target_memory_gb" in change:
        assert [r["oom"] for r in job["results"]] == [True] and job["results"][0]["peak_bytes"] > 80 * 2**30


@pytest.mark.parametrize(
    "overrides,says",
    [
        ({"num_hidden_layers": 10**6}, f"at most {MAX_LAYERS} layers"),
        ({"n_layer": MAX_LAYERS + 1}, f"at most {MAX_LAYERS} layers"),
        ({"vocab_size": 10**12}, "integers in a model config are at most"),
    ],
)
def test_unbuildable_overrides_are_refused_at_submission(harness, overrides, says):
    """10^6 layers validated before issue #16 and held a worker for days (a 300-layer tiny trace takes a minute)."""
    family = "gpt2" if "n_layer" in overrides else "bert"
    r = harness.client.post("/api/jobs", json={**TINY, "model": {"family": family, "overrides": overrides}})
    assert r.status_code == 422 and says in r.text, r.text


def test_a_real_worker_process_loop_over_http(tmp_path):
    """`serve_forever(once=True)` against a live server, methods isolated in child processes as a
    deployed worker runs them: a tiny timeout_s fails the job saying so, and the next worker loop
    takes the next job and succeeds."""
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/live.db", admin_token=ADMIN))
    with live_server(app) as url, httpx.Client(base_url=url, headers=auth(), timeout=30) as client:
        slow = client.post("/api/jobs", json={**TINY, "device": "cpu", "timeout_s": 0.01}).json()["id"]
        fine = client.post("/api/jobs", json={**TINY, "device": "estimate"}).json()["id"]
        for _ in range(2):
            loop = threading.Thread(target=serve_forever, args=(url, ADMIN), kwargs={"once": True, "poll_s": 0.2})
            loop.start()
            loop.join(timeout=120)
            assert not loop.is_alive(), "the worker loop did not return"
        first, second = (client.get(f"/api/jobs/{j}").json() for j in (slow, fine))
    assert first["status"] == "failed" and "timed out after 0.01 s (timeout_s)" in first["error"], first["error"]
    assert "Traceback" not in first["error"] and "\n" not in first["error"]
    assert second["status"] == "succeeded" and len(second["results"]) == 1, second
