"""Multi-GPU jobs end to end (issue #15): DDP/FSDP specs submitted over HTTP with a submit token, run
by the real worker loop (`profiler.worker.serve_forever`, which advertises this host's GPUs with each
claim), stored, and shown: the job page draws the per-rank chart, `GET /api/jobs/{id}` has the rows
with their ranks, and the compare API keeps a parallel run as its own series. A cuda job over more
GPUs than this host has stays queued and says what it waits for."""

import json
import re

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from profiler.worker import capabilities, serve_forever
from tests.app.conftest import ADMIN, auth
from tests.app.live_server import live_server

pytestmark = pytest.mark.slow
TINY = {"model": "bert-tiny", "methods": ["full", "wtacrs@0.3"], "seq_len": 32, "batch_sizes": [2]}
ESTIMATE = {**TINY, "device": "estimate", "measurements": ["peak_memory"]}
FSDP = {
    **ESTIMATE,
    "measurements": ["peak_memory", "max_batch_size"],
    "target_memory_gb": 1,
    "max_batch": {"upper": 8},
    "parallel": {"strategy": "fsdp", "world_size": 2},
}
GLOO = {**TINY, "device": "cpu", "steps": 2, "warmup": 1, "parallel": {"strategy": "ddp", "world_size": 2}}
CUDA = {**TINY, "device": "cuda", "measurements": ["peak_memory"], "parallel": {"strategy": "fsdp", "world_size": 2}}


def figures(page: str) -> dict:
    """The figures the job page hands to plotly.js (its JSON block, which dash.js parses)."""
    return json.loads(re.search(r'<script type="application/json" id="figures">(.*?)</script>', page, re.S).group(1))


def test_parallel_jobs_through_api_worker_and_dashboard(tmp_path):
    host = capabilities()
    if host["gpus"] >= 2:
        pytest.skip("this host has 2 GPUs or more: its worker would rightly claim the cuda job")
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/e2e.db", admin_token=ADMIN))
    with live_server(app) as url:
        admin = httpx.Client(base_url=url, headers=auth(), timeout=30)
        submit, work = (
            admin.post("/api/tokens", json={"name": name, "role": role}).json()["token"]
            for name, role in (("alice", "submit"), ("gpu-host", "worker"))
        )
        client = httpx.Client(base_url=url, headers=auth(submit), timeout=30)

        def create(spec):
            r = client.post("/api/jobs", json=spec)
            assert r.status_code == 201, r.text
            return r.json()

        cuda = create(CUDA)  # first in the queue: the worker must pass over it
        assert cuda["gpus_needed"] == 2
        single, fsdp, gloo = (create(spec)["id"] for spec in (ESTIMATE, FSDP, GLOO))
        for _ in range(3):
            serve_forever(url, work, name="e2e", poll_s=0.2, once=True, isolate=False)
        jobs = {job_id: client.get(f"/api/jobs/{job_id}").json() for job_id in (single, fsdp, gloo)}
        for job in jobs.values():
            assert job["status"] == "succeeded", (job["error"], job["errors"])

        # the rows, with how they ran and, where measured, every rank
        est = jobs[fsdp]["results"]
        assert {(r["strategy"], r["world_size"], r["rank"]) for r in est} == {("fsdp", 2, 0)}
        assert {m["method"] for m in jobs[fsdp]["max_batch"]} == {"full", "wtacrs@0.3"}
        measured = jobs[gloo]["results"]
        assert [len(r["ranks"]) for r in measured] == [2, 2] and all(r["strategy"] == "ddp" for r in measured)
        assert all(r["peak_bytes"] == max(p["peak_bytes"] for p in r["ranks"]) for r in measured)

        # the job pages: the per-rank chart, and the strategy on the max-batch chart
        shown = figures(client.get(f"/jobs/{gloo}").text)
        assert [t["x"] for t in shown["ranks"]["data"]] == [["rank 0", "rank 1"]] * 2
        assert shown["ranks"]["layout"]["title"]["text"] == "Peak memory per rank · ddp×2, batch 2 (measured)"
        shown = figures(client.get(f"/jobs/{fsdp}").text)
        assert [t["x"] for t in shown["ranks"]["data"]] == [["rank 0"]] * 2
        title = shown["max_batch"]["layout"]["title"]["text"]  # the target, less any headroom the search kept
        assert title.startswith("Largest micro-batch per rank that fits in ") and title.endswith(
            " · fsdp×2 · length 32 · fp32"
        )
        assert "ranks" not in figures(client.get(f"/jobs/{single}").text)

        # one chart, three series per method: one device, 2 FSDP ranks (both estimated), 2 DDP ranks
        compare = client.get("/api/results/compare", params={"model": "bert-tiny"}).json()
        assert {(c["mode"], c["series"]) for c in compare} == {
            (mode, f"{method}{suffix}")
            for mode, suffix in (("estimate", ""), ("estimate", " · fsdp×2"), ("cpu", " · ddp×2"))
            for method in ("full", "wtacrs@0.3")
        }
        page = client.get("/compare", params={"model": "bert-tiny", "mode": "estimate"}).text
        assert "full · fsdp×2" in page and json.dumps("full [estimate]") in page

        # what claimed them: this host's capabilities, on the claimed events
        (claimed,) = [e for e in client.get(f"/api/jobs/{gloo}/events").json() if e["kind"] == "claimed"]
        assert claimed["detail"].startswith(f"worker has {host['gpus']} GPU")

        # the cuda job was passed over and says why
        job = client.get(f"/api/jobs/{cuda['id']}").json()
        assert job["status"] == "queued" and job["attempts"] == 0
        assert job["waiting_for"].startswith("a worker with 2 GPUs (cuda, fsdp world_size 2): ")
        assert f"at most {host['gpus']} GPU" in job["waiting_for"]
        assert "Waiting for a worker with 2 GPUs" in client.get(f"/jobs/{cuda['id']}").text
