import datetime as dt
import json
import threading
import time
from pathlib import Path

import pytest

from tests.app.conftest import auth

MINIMAL = json.loads((Path(__file__).parents[1] / "data" / "minimal_spec.json").read_text())
ROW = {
    "method": "full",
    "batch_size": 2,
    "mode": "cpu",
    "peak_bytes": 1000,
    "first_step_peak_bytes": 900,
    "activation_bytes": 100,
    "tokens_per_s": 50.0,
    "oom": False,
    "error": None,
}


def register(client, name="w"):
    r = client.post("/api/workers/register", json={"name": name, "device_name": "cpu"}, headers=auth())
    assert r.status_code == 201, r.text
    return r.json()["id"]


def submit(client, **change):
    return client.post("/api/jobs", json={**MINIMAL, **change}, headers=auth()).json()["id"]


def test_claim_heartbeat_result(client):
    job_id = submit(client)
    w = register(client)
    claimed = client.post(f"/api/workers/{w}/claim", headers=auth()).json()
    assert claimed["job_id"] == job_id and claimed["attempt"] == 1 and claimed["spec"]["model"] == "bert-tiny"
    assert client.post(f"/api/workers/{w}/claim", headers=auth()).status_code == 204
    hb = client.post(
        f"/api/workers/{w}/jobs/{job_id}/heartbeat",
        json={"attempt": 1, "progress": 0.5, "message": "half"},
        headers=auth(),
    )
    assert hb.json() == {"cancel": False, "lease_seconds": 60.0}
    assert client.get(f"/api/jobs/{job_id}").json()["progress"] == 0.5
    assert client.get(f"/api/jobs/{job_id}").json()["progress_message"] == "half"
    oom_row = {**ROW, "batch_size": 4, "oom": True, "peak_bytes": None}
    result = {
        "results": [ROW, oom_row],
        "max_batch": [{"method": "full", "max_batch_size": 9, "mode": "cpu"}],
        "environment": {"device_name": "cpu (x86_64)"},
        "errors": [],
    }
    r = client.post(f"/api/workers/{w}/jobs/{job_id}/result", json={"attempt": 1, "result": result}, headers=auth())
    assert r.status_code == 204, r.text
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "succeeded"  # an OOM row is a measurement
    assert job["progress"] == 1.0 and job["progress_message"] == "done: 2 rows stored"  # not "half"
    assert [row["batch_size"] for row in job["results"]] == [2, 4] and job["max_batch"][0]["max_batch_size"] == 9
    kinds = [e["kind"] for e in client.get(f"/api/jobs/{job_id}/events").json()]
    assert kinds == ["created", "claimed", "succeeded"]
    rows = client.get("/api/results", params={"model": "bert-tiny", "method": "full"}).json()
    assert len(rows) == 2 and rows[0]["device_name"] == "cpu (x86_64)"
    csv = client.get("/api/results/export", params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv") and csv.text.count("\n") == 3
    assert client.get("/api/results/compare").status_code == 422
    compare = client.get("/api/results/compare", params={"model": "bert-tiny"}).json()
    assert compare[0]["memory_ratio_to_baseline"] == 1.0
    # a second post of the same attempt is refused: the job is finished
    r = client.post(f"/api/workers/{w}/jobs/{job_id}/result", json={"attempt": 1, "result": result}, headers=auth())
    assert r.status_code == 409


def test_results_query_matches_the_export_row_for_row(client):
    """The query's JSON is written by PostgreSQL itself on that database; it must say exactly
    what the Python-written export says, in the same order."""
    for n in range(3):
        job_id, w = submit(client), register(client, f"w{n}")
        client.post(f"/api/workers/{w}/claim", headers=auth())
        rows = [{**ROW, "batch_size": b, "peak_bytes": 1000 * b + n, "tokens_per_s": 1.5 * b} for b in (1, 2, 4)]
        rows[0] |= {"oom": True, "peak_bytes": None, "error": "out of memory"}
        result = {"results": rows, "environment": {"device_name": f"gpu {n}"}, "errors": []}
        client.post(f"/api/workers/{w}/jobs/{job_id}/result", json={"attempt": 1, "result": result}, headers=auth())
    params = {"model": "bert-tiny", "method": "full", "limit": 5, "offset": 2}
    query = client.get("/api/results", params=params)
    export = client.get("/api/results/export", params={**params, "format": "json"})
    assert query.status_code == export.status_code == 200

    def parsed(rows):  # both ISO 8601; PostgreSQL drops trailing zeros of the fraction
        return [{**r, "created_at": dt.datetime.fromisoformat(r["created_at"])} for r in rows]

    assert parsed(query.json()) == parsed(export.json()) and len(query.json()) == 5
    assert query.json()[0]["device_name"] == "gpu 2" and query.json()[-1]["device_name"] == "gpu 0"
    assert client.get("/api/results", params={"model": "nothing"}).json() == []
    # PostgreSQL refuses NUL in text: still a clean answer, never a 5xx
    r = client.get("/api/results", params={"model": "a\x00b", "method": ["x\x00"]})
    assert r.status_code < 500 and (r.status_code != 200 or r.json() == []), r.text


def test_convergence_results_are_kept_and_served(client):
    spec = {
        "model": "all-minilm-l6-v2",
        "methods": ["full", "wtacrs@0.3"],
        "seq_len": 64,
        "measurements": ["convergence"],
    }
    r = client.post("/api/jobs", json=spec, headers=auth())
    assert r.status_code == 201, r.text
    job_id, w = r.json()["id"], register(client)
    client.post(f"/api/workers/{w}/claim", headers=auth())
    rows = [
        {
            "method": m,
            "mode": "cpu",
            "accuracy": a,
            "losses": [0.7, 0.5],
            "evals": [{"epoch": 1, "step": 2, "accuracy": a, "loss": 0.4}],
            "peak_bytes": p,
            "cache_bytes": 0,
        }
        for m, a, p in (("full", 0.86, 400), ("wtacrs@0.3", 0.85, 300))
    ]
    result = {"results": [], "convergence": rows, "environment": {}, "errors": []}
    r = client.post(f"/api/workers/{w}/jobs/{job_id}/result", json={"attempt": 1, "result": result}, headers=auth())
    assert r.status_code == 204, r.text
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert [{k: served[k] for k in sent} for served, sent in zip(job["convergence"], rows)] == rows


def test_convergence_needs_a_model_with_weights(client):
    spec = {**MINIMAL, "measurements": ["convergence"]}
    r = client.post("/api/jobs", json=spec, headers=auth())
    assert r.status_code == 422 and "Models with weights: ['all-minilm-l6-v2']" in r.text


def test_expired_lease_goes_back_and_the_old_worker_is_refused(make_client):
    client = make_client(lease_seconds=0.3, max_attempts=2)
    job_id = submit(client)
    w1, w2 = register(client, "w1"), register(client, "w2")
    assert client.post(f"/api/workers/{w1}/claim", headers=auth()).json()["attempt"] == 1
    time.sleep(0.5)
    claimed = client.post(f"/api/workers/{w2}/claim", headers=auth()).json()
    assert claimed["job_id"] == job_id and claimed["attempt"] == 2
    stale = client.post(f"/api/workers/{w1}/jobs/{job_id}/heartbeat", json={"attempt": 1}, headers=auth())
    assert stale.status_code == 409
    r = client.post(
        f"/api/workers/{w1}/jobs/{job_id}/result", json={"attempt": 1, "result": {"results": []}}, headers=auth()
    )
    assert r.status_code == 409
    time.sleep(0.5)  # w2 vanishes too: out of attempts
    assert client.post(f"/api/workers/{w1}/claim", headers=auth()).status_code == 204
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed" and "worker lost 2 times" in job["error"]
    kinds = [e["kind"] for e in client.get(f"/api/jobs/{job_id}/events").json()]
    assert kinds == ["created", "claimed", "lease_expired", "claimed", "lease_expired", "failed"]


def test_cancel_reaches_a_running_job(client):
    job_id = submit(client)
    w = register(client)
    client.post(f"/api/workers/{w}/claim", headers=auth())
    assert client.post(f"/api/jobs/{job_id}/cancel", headers=auth()).json()["status"] == "running"
    hb = client.post(f"/api/workers/{w}/jobs/{job_id}/heartbeat", json={"attempt": 1}, headers=auth()).json()
    assert hb["cancel"] is True
    r = client.post(
        f"/api/workers/{w}/jobs/{job_id}/fail",
        json={"attempt": 1, "error": "stopped", "retryable": False, "cancelled": True},
        headers=auth(),
    )
    assert r.json() == {"status": "cancelled"}
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "cancelled"


def test_retry_policy(client):
    infra, bad = submit(client), submit(client, seq_len=9)
    w = register(client)
    claimed = [client.post(f"/api/workers/{w}/claim", headers=auth()).json() for _ in range(2)]
    for job in claimed:
        retry = job["job_id"] == infra
        r = client.post(
            f"/api/workers/{w}/jobs/{job['job_id']}/fail",
            json={"attempt": job["attempt"], "error": "CUDA driver error" if retry else "bad spec", "retryable": retry},
            headers=auth(),
        )
        assert r.json()["status"] == ("queued" if retry else "failed")
    assert client.get(f"/api/jobs/{bad}").json()["status"] == "failed"
    again = client.post(f"/api/workers/{w}/claim", headers=auth()).json()
    assert again["job_id"] == infra and again["attempt"] == 2


def test_workers_need_a_worker_token(client):
    submitter = client.post("/api/tokens", json={"name": "s", "role": "submit"}, headers=auth()).json()["token"]
    r = client.post("/api/workers/register", json={"name": "x"}, headers=auth(submitter))
    assert r.status_code == 403
    worker = client.post("/api/tokens", json={"name": "gpu1", "role": "worker"}, headers=auth()).json()["token"]
    w = client.post("/api/workers/register", json={"name": "x"}, headers=auth(worker)).json()["id"]
    other = client.post("/api/tokens", json={"name": "gpu2", "role": "worker"}, headers=auth()).json()["token"]
    assert client.post(f"/api/workers/{w}/claim", headers=auth(other)).status_code == 403
    assert client.post(f"/api/workers/{w}/claim", headers=auth(worker)).status_code == 204


@pytest.mark.postgres
def test_concurrent_claims_never_share_a_job(client, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("row locking (FOR UPDATE SKIP LOCKED) is the PostgreSQL path; SQLite serialises writers")
    ids = {submit(client, seq_len=8 + i) for i in range(24)}
    workers = [register(client, f"w{i}") for i in range(6)]
    got: list[str] = []
    lock = threading.Lock()

    def run(w):
        while True:
            r = client.post(f"/api/workers/{w}/claim", headers=auth())
            if r.status_code == 204:
                return
            with lock:
                got.append(r.json()["job_id"])

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)
