"""Multi-GPU jobs over the API (issue #15): what a job needs is computed from its spec at creation,
a worker advertises what it has with its claim, a cuda job with world_size N goes only to a worker
with N GPUs, and a job no live worker can run says what it waits for."""

import datetime as dt

import pytest

from app.db import Database
from app.models import Worker
from tests.app.conftest import auth
from tests.app.test_queue import MINIMAL, register

GIB = 2**30
CPU = {**MINIMAL, "measurements": ["peak_memory"]}


def cuda(world_size: int, strategy: str = "fsdp") -> dict:
    parallel = {"strategy": strategy, "world_size": world_size} if world_size > 1 else {}
    return {**CPU, "device": "cuda", **({"parallel": parallel} if parallel else {})}


def create(client, spec: dict) -> dict:
    r = client.post("/api/jobs", json=spec, headers=auth())
    assert r.status_code == 201, r.text
    return r.json()


def claim(client, worker: str, **capabilities):
    body = {"capabilities": capabilities} if capabilities else None
    r = client.post(f"/api/workers/{worker}/claim", json=body, headers=auth())
    assert r.status_code in (200, 204), r.text
    return r.json()["job_id"] if r.status_code == 200 else None


@pytest.mark.parametrize(
    "spec, needed",
    [
        (CPU, 0),
        ({**CPU, "parallel": {"strategy": "ddp", "world_size": 2}}, 0),  # gloo processes on any worker
        ({**CPU, "device": "estimate", "parallel": {"strategy": "fsdp", "world_size": 64}}, 0),  # traces rank 0
        (cuda(1), 1),
        (cuda(8), 8),
        (cuda(4, "ddp"), 4),
        ({**cuda(1), "parallel": {"strategy": "fsdp", "world_size": 1}}, 1),
    ],
)
def test_gpus_needed_comes_from_the_spec(client, spec, needed):
    job = create(client, spec)
    assert job["gpus_needed"] == needed
    listed = client.get("/api/jobs").json()["items"][0]
    assert listed["id"] == job["id"] and listed["gpus_needed"] == needed


def test_a_cuda_job_over_two_ranks_waits_for_a_worker_with_two_gpus(client):
    job = create(client, cuda(2))["id"]
    waiting = client.get(f"/api/jobs/{job}").json()["waiting_for"]
    assert waiting == "a worker with 2 GPUs (cuda, fsdp world_size 2): no worker has been seen in the last 10 minutes"

    cpu_only, one_gpu = register(client, "cpu-only"), register(client, "one-gpu")
    assert claim(client, cpu_only) is None  # no capabilities: what it registered with, no CUDA memory
    assert claim(client, one_gpu, gpus=1, gpu_memory_bytes=80 * GIB) is None
    body = client.get(f"/api/jobs/{job}").json()
    assert body["status"] == "queued"
    assert body["waiting_for"] == (
        "a worker with 2 GPUs (cuda, fsdp world_size 2): the 2 workers seen in the last 10 minutes have at most 1 GPU"
    )
    page = client.get(f"/jobs/{job}").text
    assert "Waiting for a worker with 2 GPUs" in page and "fsdp×2" in page

    two = register(client, "two-gpus")
    assert claim(client, two, gpus=2, gpu_memory_bytes=80 * GIB, cpu_ranks=8) == job
    body = client.get(f"/api/jobs/{job}").json()
    assert body["status"] == "running" and body["waiting_for"] is None
    claimed = [e for e in client.get(f"/api/jobs/{job}/events").json() if e["kind"] == "claimed"]
    assert [e["actor"] for e in claimed] == [two]
    assert claimed[0]["detail"] == "worker has 2 GPUs of 80.0 GiB, 8 cpu ranks"


def test_a_queued_job_some_live_worker_can_run_is_just_waiting_its_turn(client):
    job = create(client, cuda(2))["id"]
    w = register(client)
    claim(client, w, gpus=4)  # claims it
    second = create(client, cuda(2))["id"]
    assert client.get(f"/api/jobs/{second}").json()["waiting_for"] is None  # the 4-GPU worker was just seen
    assert client.get(f"/api/jobs/{job}").json()["waiting_for"] is None


def test_workers_not_seen_lately_do_not_count(client, database_url):
    job = create(client, cuda(2))["id"]
    w = register(client)
    assert claim(client, w, gpus=2) == job
    db = Database(database_url)
    with db.scope() as session:  # an hour without a claim or a heartbeat: gone
        session.get(Worker, w).last_seen -= dt.timedelta(hours=1)
    db.engine.dispose()
    later = create(client, cuda(2))["id"]
    assert "no worker has been seen in the last 10 minutes" in client.get(f"/api/jobs/{later}").json()["waiting_for"]
    cpu_job = create(client, CPU)["id"]
    assert client.get(f"/api/jobs/{cpu_job}").json()["waiting_for"] == (
        "a worker: no worker has been seen in the last 10 minutes"
    )


def test_cpu_and_estimate_jobs_go_to_any_worker_whatever_its_ranks(client):
    """The rule for cpu ranks is explicit: they are processes on the worker's host, so a worker that
    advertises 1 cpu rank and no GPU still runs a 2-rank gloo job."""
    ddp = create(client, {**CPU, "parallel": {"strategy": "ddp", "world_size": 2}})["id"]
    estimate = create(client, {**CPU, "device": "estimate", "parallel": {"strategy": "fsdp", "world_size": 8}})["id"]
    w = register(client)
    assert claim(client, w, gpus=0, cpu_ranks=1) == ddp
    assert claim(client, w) == estimate  # a later claim with no body keeps what it advertised
    worker = client.post("/api/workers/register", json={"name": "x", "capabilities": {"gpus": 2}}, headers=auth())
    assert worker.json()["gpus"] == 2 and worker.json()["cpu_ranks"] == 16


def test_an_older_worker_with_a_cuda_device_counts_as_one_gpu(client):
    """Before capabilities, a worker reported device_memory_bytes only for a CUDA device."""
    two, one, cpu = create(client, cuda(2))["id"], create(client, cuda(1))["id"], create(client, CPU)["id"]
    old = client.post(
        "/api/workers/register",
        json={"name": "old-gpu", "device_name": "NVIDIA H100", "device_memory_bytes": 80 * GIB},
        headers=auth(),
    ).json()["id"]
    assert [claim(client, old) for _ in range(3)] == [one, cpu, None]
    body = client.get(f"/api/jobs/{two}").json()
    assert body["status"] == "queued" and body["waiting_for"] == (
        "a worker with 2 GPUs (cuda, fsdp world_size 2): the one worker seen in the last 10 minutes has at most 1 GPU"
    )


def test_bad_capabilities_are_a_422_that_names_them(client):
    w = register(client)
    for body, says in (
        ({"capabilities": {"gpus": -1}}, "capabilities.gpus: Input should be greater than or equal to 0"),
        ({"capabilities": {"gpus": 2, "vram": 3}}, "unknown field 'vram'"),
        ({"capabilities": {"cpu_ranks": 0}}, "capabilities.cpu_ranks"),
        ({"gpus": 2}, "unknown field 'gpus'"),
    ):
        r = client.post(f"/api/workers/{w}/claim", json=body, headers=auth())
        assert r.status_code == 422 and says in said(r), r.text
    r = client.post("/api/workers/register", json={"name": "x", "capabilities": {"gpus": "many"}}, headers=auth())
    assert r.status_code == 422 and "capabilities.gpus: Input should be a valid integer" in said(r)


def said(r) -> str:
    return "; ".join(".".join(map(str, e["loc"])) + ": " + e["msg"] for e in r.json()["detail"])
