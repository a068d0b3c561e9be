import json
import re
from html import unescape
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
        r = client.get("/jobs" + query)
        assert r.status_code == 200 and (job_id in r.text) == shown, query
    assert job_id not in client.get("/jobs?status=running").text
    r = client.get("/jobs?status=bogus")
    assert r.status_code == 422 and "query.status: Input should be &#x27;queued&#x27;" in r.text


def test_the_dtype_filter_offers_bf16_weights(client):
    plain = client.post("/api/jobs", json=MINIMAL, headers=auth()).json()["id"]
    bf16 = client.post("/api/jobs", json={**MINIMAL, "dtype": "bf16-weights"}, headers=auth()).json()["id"]
    for path in ("/jobs", "/compare"):
        assert "<option >bf16-weights</option>" in client.get(path).text.replace("<option>", "<option >"), path
    html = client.get("/jobs?dtype=bf16-weights").text
    assert bf16 in html and plain not in html
    assert "<option selected>bf16-weights</option>" in html


def _rows(html: str) -> list[str]:
    """The job ids the list shows, in order."""
    table = re.search(r'<table id="jobs">(.*?)</table>', html, re.S).group(1)
    return re.findall(r'<a href="/jobs/(\w+)">', table)


def test_the_jobs_list_pages_newest_first_and_keeps_its_filters(client):
    ids = [client.post("/api/jobs", json={**MINIMAL, "seq_len": 8 + i}, headers=auth()).json()["id"] for i in range(5)]
    client.post("/api/jobs", json={**MINIMAL, "model": "gpt2-tiny"}, headers=auth())
    first = client.get("/jobs?model=bert-tiny&per_page=2").text
    assert _rows(first) == ids[::-1][:2] and "Jobs 1–2 of 5, newest first" in first
    assert 'id="previous-page"' not in first
    nxt = re.search(r'<a id="next-page" href="([^"]+)"', first).group(1)
    assert unescape(nxt) == "/jobs?model=bert-tiny&page=2&per_page=2"
    last = client.get("/jobs?model=bert-tiny&per_page=2&page=3").text
    assert _rows(last) == ids[:1] and 'id="next-page"' not in last and "Jobs 5–5 of 5" in last
    back = re.search(r'<a id="previous-page" href="([^"]+)"', last).group(1)
    assert unescape(back) == "/jobs?model=bert-tiny&page=2&per_page=2"
    assert _rows(client.get(unescape(back)).text) == ids[::-1][2:4]
    beyond = client.get("/jobs?per_page=2&page=9").text
    assert _rows(beyond) == [] and "No jobs on this page" in beyond and 'href="/jobs?page=1&amp;per_page=2"' in beyond
    assert len(_rows(client.get("/jobs").text)) == 6  # 50 a page by default
    assert 'data-refresh-ms="5000"' in first  # dash.js fetches it again every 5 s
    for bad in ("page=0", "per_page=0", "per_page=201", "page=x"):
        r = client.get("/jobs?" + bad)
        assert r.status_code == 422 and r.headers["content-type"].startswith("text/html"), bad


def test_a_queued_job_shows_its_place_in_the_queue(client):
    """The claim's order: priority first, then age; a running, cancelled or finished job has no place."""
    old, middle = (client.post("/api/jobs", json=MINIMAL, headers=auth()).json()["id"] for _ in range(2))
    urgent = client.post("/api/jobs?priority=5", json=MINIMAL, headers=auth()).json()["id"]
    gone = client.post("/api/jobs", json=MINIMAL, headers=auth()).json()["id"]
    client.post(f"/api/jobs/{gone}/cancel", headers=auth())

    def places():
        html = client.get("/jobs").text
        found = re.findall(
            r'<a href="/jobs/(\w+)">.*?</td><td[^>]*>(\w+)(?:\s*<small[^>]*>#(\d+) in queue)?', html, re.S
        )
        return {job: (status, int(n) if n else None) for job, status, n in found}

    assert places() == {urgent: ("queued", 1), old: ("queued", 2), middle: ("queued", 3), gone: ("cancelled", None)}
    assert [client.get(f"/api/jobs/{j}").json()["queue_position"] for j in (urgent, old, middle, gone)] == [
        1,
        2,
        3,
        None,
    ]
    w = client.post("/api/workers/register", json={"name": "w"}, headers=auth()).json()["id"]
    assert client.post(f"/api/workers/{w}/claim", headers=auth()).json()["job_id"] == urgent
    assert places() == {urgent: ("running", None), old: ("queued", 1), middle: ("queued", 2), gone: ("cancelled", None)}
    assert client.get(f"/api/jobs/{urgent}").json()["queue_position"] is None


def test_cancel_queued_and_rerun(client):
    job = client.post("/api/jobs", json=MINIMAL, headers=auth()).json()
    r = client.post(f"/api/jobs/{job['id']}/cancel", headers=auth())
    assert r.json()["status"] == "cancelled"
    again = client.post(f"/api/jobs/{job['id']}/rerun", headers=auth())
    assert again.status_code == 201 and again.json()["status"] == "queued" and again.json()["id"] != job["id"]
