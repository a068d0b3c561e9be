import json
from pathlib import Path

from tests.app.conftest import auth

MINIMAL = json.loads((Path(__file__).parents[1] / "data" / "minimal_spec.json").read_text())


def test_health_and_docs(client):
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    assert "/api/jobs" in client.get("/openapi.json").json()["paths"]


def test_create_with_the_minimal_spec_as_written(client):
    r = client.post("/api/jobs", json=MINIMAL, headers=auth())
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["id"] and job["spec"]["model"] == "bert-tiny"
    got = client.get(f"/api/jobs/{job['id']}").json()
    assert got["id"] == job["id"] and got["results"] == [] and got["spec"]["methods"] == ["full", "wtacrs@0.3"]
    events = client.get(f"/api/jobs/{job['id']}/events").json()
    assert [e["kind"] for e in events] == ["created"] and events[0]["actor"] == "admin"


def test_writes_need_a_token_with_the_right_role(client):
    assert client.post("/api/jobs", json=MINIMAL).status_code == 401
    assert client.post("/api/jobs", json=MINIMAL, headers=auth("nope")).status_code == 401
    assert client.post("/api/jobs", json=MINIMAL, headers={"Authorization": "Basic x"}).status_code == 401
    reader = client.post("/api/tokens", json={"name": "viewer", "role": "read"}, headers=auth()).json()["token"]
    r = client.post("/api/jobs", json=MINIMAL, headers=auth(reader))
    assert r.status_code == 403 and "needs a token with role submit or admin" in r.json()["detail"]
    submitter = client.post("/api/tokens", json={"name": "alice", "role": "submit"}, headers=auth()).json()["token"]
    r = client.post("/api/jobs", json=MINIMAL, headers=auth(submitter))
    assert r.status_code == 201 and r.json()["submitted_by"] == "alice"
    assert client.get("/api/tokens", headers=auth(submitter)).status_code == 403


def test_reads_can_be_closed(make_client):
    closed = make_client(open_reads=False)
    assert closed.get("/api/jobs").status_code == 401
    assert closed.get("/api/jobs", headers=auth()).status_code == 200


def test_bad_specs_get_422_that_says_what_is_wrong(client):
    r = client.post("/api/jobs", json={**MINIMAL, "model": "bert-huge"}, headers=auth())
    assert r.status_code == 422 and "unknown model preset 'bert-huge'" in r.text
    r = client.post("/api/jobs", json={**MINIMAL, "methods": ["wtacrs@2"]}, headers=auth())
    assert r.status_code == 422 and "outside (0, 1]" in r.text
    r = client.post("/api/jobs", content=b"{not json", headers={**auth(), "content-type": "application/json"})
    assert r.status_code == 422
    assert client.get("/api/jobs/doesnotexist").status_code == 404


def test_list_filter_paginate(client):
    ids = [client.post("/api/jobs", json={**MINIMAL, "seq_len": 8 + i}, headers=auth()).json()["id"] for i in range(5)]
    client.post("/api/jobs", json={**MINIMAL, "model": "gpt2-tiny"}, headers=auth())
    page = client.get("/api/jobs", params={"model": "bert-tiny", "limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and len(page["items"]) == 2
    assert {j["id"] for j in page["items"]} <= set(ids)
    assert client.get("/api/jobs", params={"status": "running"}).json()["total"] == 0
    r = client.get("/api/jobs", params={"status": "bogus"})
    assert r.status_code == 422 and "'queued', 'running', 'succeeded', 'failed' or 'cancelled'" in r.text
    assert client.get("/api/jobs", params={"status": "queued", "device": "cpu"}).json()["total"] == 6


def test_jobs_page_filters_by_status(client):
    job_id = client.post("/api/jobs", json=MINIMAL, headers=auth()).json()["id"]
    for query, shown in (("", True), ("?status=&model=&device=&dtype=", True), ("?status=queued", True)):
        r = client.get("/" + query)
        assert r.status_code == 200 and (job_id in r.text) == shown, query
    assert job_id not in client.get("/?status=running").text
    r = client.get("/?status=bogus")
    assert r.status_code == 422 and "query.status: Input should be &#x27;queued&#x27;" in r.text


def test_cancel_queued_and_rerun(client):
    job = client.post("/api/jobs", json=MINIMAL, headers=auth()).json()
    r = client.post(f"/api/jobs/{job['id']}/cancel", headers=auth())
    assert r.json()["status"] == "cancelled"
    again = client.post(f"/api/jobs/{job['id']}/rerun", headers=auth())
    assert again.status_code == 201 and again.json()["status"] == "queued" and again.json()["id"] != job["id"]
