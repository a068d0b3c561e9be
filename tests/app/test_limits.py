"""Bounds on what a client sends: body size, list lengths, error size; and a live server that keeps
answering /healthz while abusive bodies are refused (issue #17: one 4.8 MB spec froze it for 320 s)."""

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi import Request
from fastapi.exceptions import RequestValidationError

from app.errors import SHOWN_ERRORS, excerpt, on_validation_error
from tests.app.conftest import ADMIN, auth
from tests.app.live_server import free_port

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = json.loads((ROOT / "tests" / "data" / "minimal_spec.json").read_text())
MIB = 2**20
JSON = {"content-type": "application/json"}


@pytest.fixture
def make(make_client):  # the limits hold on both stores
    return make_client


def post_spec(client, spec, headers=None):
    body = spec if isinstance(spec, bytes) else json.dumps(spec).encode()
    started = time.perf_counter()
    r = client.post("/api/jobs", content=body, headers={**JSON, **(auth() if headers is None else headers)})
    return r, time.perf_counter() - started


def test_a_body_over_the_limit_is_413_naming_the_limit(make):
    client = make()
    r, _ = post_spec(client, {**MINIMAL, "note": "x" * MIB})
    assert r.status_code == 413 and r.headers["content-type"] == "application/json"
    assert "limit of 1048576 bytes (1 MiB)" in r.json()["detail"]
    # without a Content-Length (chunked), counted as it arrives
    chunks = (b" " * 65536 for _ in range(20))
    r = client.post("/api/jobs", content=chunks, headers={**JSON, **auth()})
    assert r.status_code == 413, r.text
    # the limit is a setting
    small = make(max_body_bytes=4096)
    assert post_spec(small, {**MINIMAL, "note": "x" * 5000})[0].status_code == 413
    assert post_spec(small, MINIMAL)[0].status_code == 201


def test_the_body_is_read_only_after_the_token_check(make):
    client = make()
    for body in (b"{not json", json.dumps({**MINIMAL, "note": "x" * 2 * MIB}).encode()):
        assert post_spec(client, body, headers={})[0].status_code == 401
        assert post_spec(client, body, headers=auth("nope"))[0].status_code == 401


def test_a_worker_result_may_be_larger_than_a_spec(make):
    client = make(max_result_bytes=8 * MIB)
    job_id = post_spec(client, MINIMAL)[0].json()["id"]
    w = client.post("/api/workers/register", json={"name": "w"}, headers=auth()).json()["id"]
    assert client.post(f"/api/workers/{w}/claim", headers=auth()).json()["job_id"] == job_id
    path = f"/api/workers/{w}/jobs/{job_id}/result"
    losses = [0.123456789] * 400_000  # a long loss curve: about 5 MB of JSON
    big = {
        "attempt": 1,
        "result": {"results": [], "convergence": [{"method": "full", "mode": "cpu", "losses": losses}]},
    }
    assert client.post(path, json=big).status_code == 401  # no token: refused before reading it
    assert client.post(path, json=big, headers=auth()).status_code == 204
    assert len(client.get(f"/api/jobs/{job_id}").json()["convergence"][0]["losses"]) == 400_000
    too_big = {"attempt": 1, "result": {"results": [], "note": "x" * 9 * MIB}}
    r = client.post(path, json=too_big, headers=auth())
    assert r.status_code == 413 and "8388608 bytes" in r.json()["detail"]
    # the larger limit is for results only
    r = client.post(f"/api/workers/{w}/jobs/{job_id}/heartbeat", json={"attempt": 1, "message": "x" * 2 * MIB})
    assert r.status_code == 413


@pytest.mark.parametrize(
    "change,message",
    [
        ({"methods": [f"wtacrs@0.{i + 1:02d}" for i in range(33)]}, "at most 32 items"),
        ({"batch_sizes": list(range(1, 66))}, "at most 64 items"),
        ({"measurements": ["peak_memory"] * 17}, "at most 16 items"),
        ({"methods": ["full" + " " * 70]}, "at most 64 characters"),
        ({"model": {"family": "bert", "overrides": {f"k{i}": 1 for i in range(65)}}}, "65 overrides; at most 64"),
        ({"max_batch": {"upper": 2_000_000}}, "less than or equal to 1000000"),
        ({"batch_sizes": [2, 2_000_000]}, "outside 1..1000000"),
    ],
)
def test_every_list_has_a_bound_the_error_names(make, change, message):
    r, _ = post_spec(make(), {**MINIMAL, **change})
    assert r.status_code == 422 and message in r.text, r.text


def test_huge_bodies_are_refused_fast_with_a_short_error(make):
    """With the size limit raised out of the way, the validation itself must stay cheap."""
    client = make(max_body_bytes=16 * MIB)
    cases = {
        "600k methods": ({**MINIMAL, "methods": ["full"] * 600_000}, "at most 32 items"),
        "600k batch sizes": ({**MINIMAL, "batch_sizes": list(range(1, 600_001))}, "at most 64 items"),
        "5 MB unknown field": ({**MINIMAL, "bogus": "x" * 5_000_000}, "unknown field 'bogus'"),
    }
    for name, (spec, message) in cases.items():
        r, took = post_spec(client, spec)
        assert r.status_code == 422 and message in r.text, (name, r.text[:500])
        assert took < 2.0, f"{name}: {took:.2f} s"
        assert len(r.content) < 4000, f"{name}: a {len(r.content)}-byte error body"
        for error in r.json()["detail"]:
            assert set(error) == {"type", "loc", "msg", "input"}
            assert len(json.dumps(error["input"])) < 300


@pytest.mark.parametrize("body", [b"\x80", b'{"model": "\xff\xfe"}', b"\xff" * 5000])
def test_a_body_that_is_not_utf8_is_422_not_500(make, body):
    """Found by the stateful fuzzing (issue #16): the error quoted the raw bytes and failed to encode them."""
    client = make()
    r, _ = post_spec(client, body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["type"] in ("json_invalid", "utf8_type", "model_type") and len(r.content) < 4000
    w = client.post("/api/workers/register", json={"name": "w"}, headers=auth()).json()["id"]
    r = client.post(f"/api/workers/{w}/jobs/x/result", content=body, headers={**JSON, **auth()})  # its JsonBody too
    assert r.status_code == 422, r.text


def test_unknown_keys_are_one_error_however_many(make):
    client = make()
    r, _ = post_spec(client, {**MINIMAL, **{f"unknown{i}": i for i in range(40_000)}})
    (error,) = r.json()["detail"]
    assert r.status_code == 422 and error["loc"] == ["body"]
    assert "unknown field 'unknown0', 'unknown1', 'unknown2', 'unknown3', 'unknown4' and 39995 more" in error["msg"]
    assert "allowed fields: model, methods, seq_len, batch_sizes" in error["msg"]
    w = client.post("/api/workers/register", json={"name": "w", **{f"k{i}": 0 for i in range(40_000)}}, headers=auth())
    assert w.status_code == 422 and len(w.json()["detail"]) == 1 and "and 39995 more" in w.text


def test_the_error_list_is_capped():
    request = Request({"type": "http", "method": "POST", "path": "/api/jobs", "headers": [], "query_string": b""})
    exc = RequestValidationError(
        [{"type": "t", "loc": ("body", f"k{i}"), "msg": "bad", "input": i} for i in range(5000)]
    )
    body = json.loads(asyncio.run(on_validation_error(request, exc)).body)
    assert len(body["detail"]) == SHOWN_ERRORS and body["errors_not_shown"] == 5000 - SHOWN_ERRORS
    assert body["detail"][0] == {"type": "t", "loc": ["body", "k0"], "msg": "bad", "input": 0}


def test_excerpt_keeps_short_values_and_cuts_long_ones():
    assert excerpt("abc") == "abc" and excerpt(7) == 7 and excerpt(None) is None
    assert excerpt({"a": [1, 2]}) == {"a": [1, 2]}
    assert excerpt("x" * 1000) == "x" * 200 + "…"
    cut = excerpt(["full"] * 600_000)
    assert cut.startswith('["full", "full"') and cut.endswith("…") and len(cut) == 201
    assert excerpt(10**5000) == "<int>"  # too long for Python to print


def test_rerun_of_a_spec_that_no_longer_validates_is_422(make):
    client = make()
    job_id = post_spec(client, MINIMAL)[0].json()["id"]
    db = client.app.state.db
    from app.models import Job

    with db.scope() as session:  # as if stored before the bound existed
        session.get(Job, job_id).spec = {**MINIMAL, "methods": [f"wtacrs@0.{i + 1:02d}" for i in range(40)]}
    r = client.post(f"/api/jobs/{job_id}/rerun", headers=auth())
    assert r.status_code == 422 and "no longer valid" in r.json()["detail"] and "at most 32" in r.json()["detail"]


# --- a real server in its own process, as users run it ---


@pytest.fixture
def live_server(tmp_path):
    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/live.db", "WTACRS_ADMIN_TOKEN": ADMIN}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "app.main:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_healthz_keeps_answering_while_abusive_bodies_are_refused(live_server):
    bodies = {
        "600k methods (4.8 MB)": {**MINIMAL, "methods": ["full"] * 600_000},
        "batch sizes 1..600000 (4.7 MB)": {**MINIMAL, "batch_sizes": list(range(1, 600_001))},
        "5 MB string in an unknown field": {**MINIMAL, "bogus": "x" * 5_000_000},
        "100k methods (0.8 MB, under the size limit)": {**MINIMAL, "methods": ["full"] * 100_000},
        "130k batch sizes (0.9 MB, under the size limit)": {**MINIMAL, "batch_sizes": list(range(1, 130_000))},
        "0.9 MB string in an unknown field": {**MINIMAL, "bogus": "x" * 900_000},
        "40k unknown keys (0.6 MB)": {**MINIMAL, **{f"k{i}": 0 for i in range(40_000)}},
        "50k overrides (0.6 MB)": {
            **MINIMAL,
            "model": {"family": "bert", "overrides": {f"k{i}": [] for i in range(50_000)}},
        },
    }
    payloads = {name: json.dumps(spec).encode() for name, spec in bodies.items()}  # before timing: this is slow
    # A server that parses in its event loop stalls /healthz for a body's whole parse, every round;
    # a busy machine (the suite runs two workers on two cores) can stall one round's poll for a
    # scheduler slice. So the latency bar is met by one of two rounds; every round's answers are checked.
    worsts = []
    for _ in range(2):
        outcomes, latencies = _abusive_round(live_server, payloads)
        report = "\n".join(f"{n}: {s} in {t * 1000:.0f} ms, {size} bytes" for n, (s, t, size) in outcomes.items())
        print(f"\n{report}\n/healthz: {len(latencies)} polls, worst {max(latencies) * 1000:.1f} ms")
        for status, took, size in outcomes.values():
            assert status in (413, 422) and took < 1.0 and size < 4000, report
        assert len(latencies) > 10, report
        worsts.append(max(latencies))
        if worsts[-1] < 0.1:
            break
    assert min(worsts) < 0.1, f"/healthz took {[round(w * 1000) for w in worsts]} ms at worst per round\n{report}"


def _abusive_round(live_server: str, payloads: dict[str, bytes]):
    """Post each payload while another thread polls /healthz: (name: (status, seconds, size)), latencies."""
    latencies, stop = [], threading.Event()

    def poll():
        with httpx.Client(base_url=live_server, timeout=10) as c:
            while not stop.is_set():
                started = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.005)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    outcomes = {}
    with httpx.Client(base_url=live_server, timeout=30, headers={**JSON, **auth()}) as c:
        time.sleep(0.2)  # a baseline of polls before the first abusive body
        for name, payload in payloads.items():
            started = time.perf_counter()
            r = c.post("/api/jobs", content=payload)
            outcomes[name] = (r.status_code, time.perf_counter() - started, len(r.content))
            time.sleep(0.05)
        assert c.post("/api/jobs", content=json.dumps(MINIMAL)).status_code == 201  # the contract still holds
    stop.set()
    poller.join(timeout=10)
    return outcomes, latencies


# --- per-token queue limit and pagination bounds ---


def test_one_token_cannot_fill_the_queue(make):
    client = make(max_queued_per_token=3)
    token = client.post("/api/tokens", json={"name": "busy", "role": "submit"}, headers=auth()).json()["token"]
    ids = [post_spec(client, MINIMAL, headers=auth(token))[0].json()["id"] for _ in range(3)]
    r, _ = post_spec(client, MINIMAL, headers=auth(token))
    assert r.status_code == 429 and r.headers["retry-after"] == "60", r.text
    assert "token 'busy' has 3 jobs queued or running; the limit is 3 per token" in r.json()["detail"]
    assert client.post(f"/api/jobs/{ids[0]}/rerun", headers=auth(token)).status_code == 429  # a re-run is a job
    assert client.get("/api/jobs", params={"status": "queued"}).json()["total"] == 3  # nothing was queued
    # the admin token is the operator's: exempt
    assert all(post_spec(client, MINIMAL)[0].status_code == 201 for _ in range(4))
    # a cancelled or finished job no longer counts
    assert client.post(f"/api/jobs/{ids[0]}/cancel", headers=auth(token)).json()["status"] == "cancelled"
    assert post_spec(client, MINIMAL, headers=auth(token))[0].status_code == 201
    assert post_spec(client, MINIMAL, headers=auth(token))[0].status_code == 429
    # 0 turns the limit off
    unlimited = make(max_queued_per_token=0)
    assert post_spec(unlimited, MINIMAL, headers=auth(token))[0].status_code == 201


@pytest.mark.parametrize(
    "path,params,message",
    [
        ("/api/jobs", {"limit": 501}, "less than or equal to 500"),
        ("/api/jobs", {"limit": 0}, "greater than or equal to 1"),
        ("/api/jobs", {"offset": -1}, "greater than or equal to 0"),
        ("/api/results", {"limit": 100_001}, "less than or equal to 100000"),
        ("/api/results/export", {"limit": 100_001}, "less than or equal to 100000"),
        ("/api/results", {"offset": 10**10}, "less than or equal to 1000000000"),
    ],
)
def test_pages_are_bounded_and_the_error_says_the_bound(make, path, params, message):
    r = make().get(path, params=params)
    assert r.status_code == 422 and message in r.text, r.text
