"""The worker protocol under abuse (issue #16): stale, repeated, out-of-order, malformed and huge
posts are refused with a clear 4xx and store nothing twice; a server restart mid-job loses nothing."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.app.conftest import ADMIN, auth
from tests.app.live_server import free_port, live_server

MINIMAL = json.loads((Path(__file__).parents[1] / "data" / "minimal_spec.json").read_text())
MIB = 2**20
ROWS = [
    {"method": m, "batch_size": b, "mode": "cpu", "peak_bytes": 1000 * b, "oom": False}
    for m in ("full", "wtacrs@0.3")
    for b in (2, 4)
]
RESULT = {"results": ROWS, "environment": {"device_name": "cpu (test)"}, "errors": []}


def register(client, name="w", token=ADMIN) -> str:
    r = client.post("/api/workers/register", json={"name": name}, headers=auth(token))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def submit(client) -> str:
    r = client.post("/api/jobs", json=MINIMAL, headers=auth())
    assert r.status_code == 201, r.text
    return r.json()["id"]


def claim(client, worker: str, token=ADMIN) -> dict:
    r = client.post(f"/api/workers/{worker}/claim", headers=auth(token))
    assert r.status_code == 200, r.text
    return r.json()


def post(client, worker, job_id, what, body, token=ADMIN, **kw):
    return client.post(f"/api/workers/{worker}/jobs/{job_id}/{what}", json=body, headers=auth(token), **kw)


def stored_rows(client, job_id) -> int:
    return len(client.get("/api/results", params={"job_id": job_id}).json())


def event_kinds(client, job_id) -> list[str]:
    return [e["kind"] for e in client.get(f"/api/jobs/{job_id}/events").json()]


def assert_refused(r, status, *says):
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    text = detail if isinstance(detail, str) else json.dumps(detail)
    for s in says:
        assert s in text, text


def test_a_result_for_a_job_the_worker_no_longer_holds_is_409_and_stores_nothing(make_client):
    client = make_client(lease_seconds=0.3)
    job_id = submit(client)
    first, second = register(client, "first"), register(client, "second")
    assert claim(client, first)["attempt"] == 1
    time.sleep(0.5)  # the first worker's lease runs out; the next claim hands the job on
    handed_on = claim(client, second)
    assert handed_on["job_id"] == job_id and handed_on["attempt"] == 2
    for attempt in (1, 2):  # its own stale attempt, or a guess at the current one
        r = post(client, first, job_id, "result", {"attempt": attempt, "result": RESULT})
        assert_refused(r, 409, f"job {job_id} attempt {attempt} is not held by worker {first}")
        assert_refused(post(client, first, job_id, "heartbeat", {"attempt": attempt}), 409, "not held")
        r = post(client, first, job_id, "fail", {"attempt": attempt, "error": "x", "retryable": True})
        assert_refused(r, 409, "not held")
    assert stored_rows(client, job_id) == 0
    assert post(client, second, job_id, "result", {"attempt": 2, "result": RESULT}).status_code == 204
    assert stored_rows(client, job_id) == len(ROWS)
    assert event_kinds(client, job_id) == ["created", "claimed", "lease_expired", "claimed", "succeeded"]


def test_a_result_posted_twice_is_stored_once(make_client):
    client = make_client()
    job_id, worker = submit(client), register(client)
    claim(client, worker)
    assert post(client, worker, job_id, "result", {"attempt": 1, "result": RESULT}).status_code == 204
    for _ in range(2):
        r = post(client, worker, job_id, "result", {"attempt": 1, "result": RESULT})
        assert_refused(r, 409, "not held")
    assert stored_rows(client, job_id) == len(ROWS)
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded"
    assert event_kinds(client, job_id) == ["created", "claimed", "succeeded"]


def test_posts_out_of_order_are_refused(make_client):
    client = make_client()
    job_id, worker = submit(client), register(client)
    # before the claim: nothing is held yet
    assert_refused(post(client, worker, job_id, "result", {"attempt": 1, "result": RESULT}), 409, "not held")
    assert_refused(post(client, worker, job_id, "heartbeat", {"attempt": 1}), 409, "not held")
    r = post(client, worker, job_id, "fail", {"attempt": 1, "error": "x", "retryable": False})
    assert_refused(r, 409, "not held")
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "queued"
    # a job or a worker that does not exist
    assert_refused(post(client, worker, "nosuchjob", "result", {"attempt": 1, "result": RESULT}), 409, "not held")
    assert_refused(post(client, "nosuchworker", job_id, "heartbeat", {"attempt": 1}), 404, "register first")
    # another token's worker
    token = client.post("/api/tokens", json={"name": "other", "role": "worker"}, headers=auth()).json()["token"]
    assert_refused(post(client, worker, job_id, "heartbeat", {"attempt": 1}, token=token), 403, "another token")
    # after the result: the job is finished, its lease released
    claim(client, worker)
    assert post(client, worker, job_id, "result", {"attempt": 1, "result": RESULT}).status_code == 204
    assert_refused(post(client, worker, job_id, "heartbeat", {"attempt": 1, "progress": 0.5}), 409, "not held")
    r = post(client, worker, job_id, "fail", {"attempt": 1, "error": "late", "retryable": True})
    assert_refused(r, 409, "not held")
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["error"] is None and job["progress"] == 1.0
    assert stored_rows(client, job_id) == len(ROWS)


@pytest.mark.parametrize(
    "what,body,says",
    [
        ("result", b"{not json", "JSON"),
        ("result", b"", "JSON"),
        ("result", b"[]", "should be an object"),
        ("result", json.dumps({"result": RESULT}).encode(), "attempt"),
        ("result", json.dumps({"attempt": 0, "result": RESULT}).encode(), "greater than or equal to 1"),
        ("result", json.dumps({"attempt": 1, "result": {"results": [{"method": "full"}]}}).encode(), "batch_size"),
        (
            "result",
            json.dumps({"attempt": 1, "result": {"results": [{**ROWS[0], "mode": "gpu"}]}}).encode(),
            "'cuda', 'cpu' or 'estimate'",
        ),
        ("result", json.dumps({"attempt": 1, "result": {**RESULT, "bogus": 1}}).encode(), "bogus"),
        ("heartbeat", b"{not json", "JSON"),
        ("heartbeat", json.dumps({"attempt": 1, "progress": 2.0}).encode(), "less than or equal to 1"),
        ("fail", json.dumps({"attempt": 1, "error": "x"}).encode(), "retryable"),
    ],
)
def test_malformed_bodies_are_422_and_change_nothing(make_client, what, body, says):
    client = make_client()
    job_id, worker = submit(client), register(client)
    claim(client, worker)
    r = client.post(
        f"/api/workers/{worker}/jobs/{job_id}/{what}",
        content=body,
        headers={**auth(), "content-type": "application/json"},
    )
    assert r.status_code == 422 and says in r.text, r.text
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "running" and stored_rows(client, job_id) == 0
    # the worker still holds the job and can finish it
    assert post(client, worker, job_id, "result", {"attempt": 1, "result": RESULT}).status_code == 204
    assert stored_rows(client, job_id) == len(ROWS)


def test_a_50_mb_body_is_413_and_changes_nothing(make_client):
    client = make_client()
    job_id, worker = submit(client), register(client)
    claim(client, worker)
    path = f"/api/workers/{worker}/jobs/{job_id}/result"
    big = b'{"attempt": 1, "result": {"results": [], "note": "' + b"x" * (50 * MIB) + b'"}}'
    headers = {**auth(), "content-type": "application/json"}
    r = client.post(path, content=big, headers=headers)  # declared length: refused before a byte is read
    assert_refused(r, 413, "limit of 33554432 bytes (32 MiB)")
    chunks = (big[i : i + MIB] for i in range(0, len(big), MIB))  # no length: counted as it arrives
    assert_refused(client.post(path, content=chunks, headers=headers), 413, "32 MiB")
    for what in ("heartbeat", "fail"):  # the other worker posts keep the 1 MiB limit
        r = client.post(f"/api/workers/{worker}/jobs/{job_id}/{what}", content=big[: 2 * MIB], headers=headers)
        assert_refused(r, 413, "1 MiB")
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "running" and stored_rows(client, job_id) == 0
    assert post(client, worker, job_id, "heartbeat", {"attempt": 1}).status_code == 200
    assert post(client, worker, job_id, "result", {"attempt": 1, "result": RESULT}).status_code == 204
    assert stored_rows(client, job_id) == len(ROWS)


# --- a server restart mid-job: a new app instance on the same SQLite file ---


def new_app(db: Path, **settings):
    return create_app(Settings(database_url=f"sqlite:///{db}", admin_token=ADMIN, **settings))


def test_every_dtype_is_stored_on_both_stores(make_client):
    """jobs.dtype was VARCHAR(8): PostgreSQL refused every 'bf16-weights' job (migration 0002)."""
    client = make_client()
    for dtype in ("fp32", "bf16", "bf16-weights"):
        r = client.post("/api/jobs", json={**MINIMAL, "dtype": dtype}, headers=auth())
        assert r.status_code == 201, r.text
        worker = register(client, dtype)
        job_id = claim(client, worker)["job_id"]
        assert post(client, worker, job_id, "result", {"attempt": 1, "result": RESULT}).status_code == 204
        rows = client.get("/api/results", params={"job_id": job_id, "dtype": dtype}).json()
        assert len(rows) == len(ROWS) and {row["dtype"] for row in rows} == {dtype}


def test_restart_mid_job_the_lease_lets_the_worker_finish(tmp_path):
    db = tmp_path / "restart.db"
    with TestClient(new_app(db)) as before:
        job_id, worker = submit(before), register(before)
        claim(before, worker)
        post(before, worker, job_id, "heartbeat", {"attempt": 1, "progress": 0.5, "message": "half"})
    with TestClient(new_app(db)) as after:  # the same file, a new process's worth of state
        reply = post(after, worker, job_id, "heartbeat", {"attempt": 1, "progress": 0.75})
        assert reply.status_code == 200 and reply.json()["cancel"] is False
        assert post(after, worker, job_id, "result", {"attempt": 1, "result": RESULT}).status_code == 204
        job = after.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "succeeded" and job["attempts"] == 1
        assert stored_rows(after, job_id) == len(ROWS)
        assert event_kinds(after, job_id) == ["created", "claimed", "succeeded"]


def test_restart_mid_job_without_its_worker_the_job_returns_to_the_queue(tmp_path):
    db = tmp_path / "restart.db"
    with TestClient(new_app(db, lease_seconds=0.3)) as before:
        job_id, lost = submit(before), register(before, "lost")
        claim(before, lost)
    time.sleep(0.5)  # the lost worker never heartbeats again
    with TestClient(new_app(db, lease_seconds=0.3)) as after:
        other = register(after, "other")
        assert claim(after, other)["attempt"] == 2
        assert_refused(post(after, lost, job_id, "result", {"attempt": 1, "result": RESULT}), 409, "not held")
        assert post(after, other, job_id, "result", {"attempt": 2, "result": RESULT}).status_code == 204
        assert stored_rows(after, job_id) == len(ROWS)
        assert event_kinds(after, job_id) == ["created", "claimed", "lease_expired", "claimed", "succeeded"]


@pytest.mark.slow
def test_a_real_worker_survives_a_server_restart_mid_job(tmp_path):
    """`serve_forever` runs a measured cpu job while its server is stopped and a new one started on
    the same file and port: its heartbeats and result reach the new server, and the job succeeds once."""
    from profiler.worker import serve_forever

    db, port = tmp_path / "live.db", free_port()
    spec = {**MINIMAL, "steps": 15, "batch_sizes": [2, 4, 8]}  # several seconds on a CPU
    with live_server(new_app(db, lease_seconds=4), port) as url:
        job_id = httpx.post(f"{url}/api/jobs", json=spec, headers=auth()).json()["id"]
        worker = threading.Thread(
            target=serve_forever, args=(url, ADMIN), kwargs={"once": True, "poll_s": 0.2, "isolate": False}
        )
        worker.start()
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/api/jobs/{job_id}").json()["status"] != "running":
            assert time.monotonic() < deadline, "the worker did not claim the job"
            time.sleep(0.1)
        time.sleep(1.5)  # mid-measurement, with a heartbeat or two behind it
    stopped = time.monotonic()
    with live_server(new_app(db, lease_seconds=4), port) as url:
        print(f"\nserver down for {time.monotonic() - stopped:.2f} s")
        worker.join(timeout=180)
        assert not worker.is_alive(), "the worker did not finish"
        job = httpx.get(f"{url}/api/jobs/{job_id}").json()
        events = httpx.get(f"{url}/api/jobs/{job_id}/events").json()
        rows = httpx.get(f"{url}/api/results", params={"job_id": job_id}).json()
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert [e["kind"] for e in events] == ["created", "claimed", "succeeded"], events
    assert len(job["results"]) == len(rows) == 6  # two methods x three batches, stored once
