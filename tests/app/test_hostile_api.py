"""The API against a hostile worker and hostile submitters (issue #24, "Trust the store"), on both
stores: non-finite and oversized numbers anywhere are a 422 naming the field (never a 500); a
worker's result rows are strict (declared fields, finite and bounded numbers, bounded strings, the
job's own methods, a bounded number of rows), and a refused result leaves the job the worker's to
post again; the API never writes NaN or Infinity; a submit token acts on its own jobs only, may not
raise priority, and a cancel is one event however many arrive."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import UnionType
from typing import Annotated, Literal, Union, get_args, get_origin

import httpx
import pytest
from annotated_types import MaxLen
from sqlalchemy import update

from app.config import Settings
from app.main import create_app
from app.models import Job, ResultRow
from contract import rows
from contract.results import JobRows
from contract.rows import Check, Checked
from tests.app.conftest import ADMIN, auth
from tests.app.live_server import live_server

DATA = Path(__file__).parents[1] / "data"
MINIMAL = json.loads((DATA / "minimal_spec.json").read_text())
RECORDED = json.loads((DATA / "minimal_result.json").read_text())  # `wtacrs-prof run examples/minimal.json`
GPU_REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "gpu-reference"
ROW = {"method": "full", "batch_size": 2, "mode": "cpu", "peak_bytes": 1000, "tokens_per_s": 10.0, "oom": False}
JSON = {"content-type": "application/json"}


def strict_json(text: str):
    """Parse as a JSON client must: NaN and Infinity are not JSON."""

    def refuse(name):
        raise AssertionError(f"the API wrote {name}, which is not JSON: {text[:300]}")

    return json.loads(text, parse_constant=refuse)


def token(client, name: str, role: str) -> str:
    r = client.post("/api/tokens", json={"name": name, "role": role}, headers=auth())
    assert r.status_code == 201, r.text
    return r.json()["token"]


def submit(client, spec=None, who=ADMIN, **params) -> str:
    r = client.post("/api/jobs", json=spec or MINIMAL, params=params, headers=auth(who))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def running_job(client, spec=None, capabilities=None) -> tuple[str, str]:
    """A job claimed by a fresh worker: (job id, worker id)."""
    job_id = submit(client, spec)
    body = {"name": "w"} | ({"capabilities": capabilities} if capabilities else {})
    worker = client.post("/api/workers/register", json=body, headers=auth()).json()["id"]
    claimed = client.post(f"/api/workers/{worker}/claim", headers=auth()).json()
    assert claimed["job_id"] == job_id and claimed["attempt"] == 1
    return job_id, worker


def post_raw(client, path: str, body: bytes, who=ADMIN) -> httpx.Response:
    return client.post(path, content=body, headers={**auth(who), **JSON})


def post_result(client, job_id, worker, result) -> httpx.Response:
    body = json.dumps({"attempt": 1, "result": result}, allow_nan=True).encode()
    return post_raw(client, f"/api/workers/{worker}/jobs/{job_id}/result", body)


def refused(r: httpx.Response, *loc_ends: str, says: str = "") -> list[dict]:
    """A 422 whose body is JSON, with an error at each of `loc_ends` (the last part of its loc)."""
    assert r.status_code == 422, r.text
    detail = strict_json(r.text)["detail"]
    ends = {str(e["loc"][-1]) for e in detail}
    assert set(loc_ends) <= ends, detail
    assert says in json.dumps(detail), detail
    return detail


def events(client, job_id) -> list[dict]:
    return client.get(f"/api/jobs/{job_id}/events").json()


# --- non-finite and oversized numbers: 422 naming the field, in every request ---


@pytest.mark.parametrize(
    "field,raw",
    [("seq_len", "NaN"), ("lr", "Infinity"), ("target_memory_gb", "-Infinity"), ("target_memory_gb", "1e400")],
)
def test_a_spec_with_a_non_finite_number_is_422_naming_it(client, field, raw):
    body = json.dumps(MINIMAL)[:-1] + f', "{field}": {raw}}}'
    refused(post_raw(client, "/api/jobs", body.encode()), field, says="finite")
    # inside a model's overrides, where any number is allowed: still not NaN
    spec = {**MINIMAL, "model": {"family": "bert", "overrides": {"hidden_dropout_prob": 0.5}}}
    body = json.dumps(spec).replace("0.5", "NaN")
    refused(post_raw(client, "/api/jobs", body.encode()), "hidden_dropout_prob", says="finite")
    assert client.get("/api/jobs").json()["total"] == 0


def test_every_worker_and_token_body_refuses_non_finite_numbers(client):
    job_id, worker = running_job(client)
    path = f"/api/workers/{worker}/jobs/{job_id}"
    refused(post_raw(client, f"{path}/heartbeat", b'{"attempt": 1, "progress": NaN}'), "progress", says="finite")
    register = b'{"name": "x", "device_memory_bytes": NaN}'
    refused(post_raw(client, "/api/workers/register", register), "device_memory_bytes")
    refused(post_raw(client, "/api/tokens", b'{"name": NaN, "role": "submit"}'), "name")
    refused(post_raw(client, f"{path}/fail", b'{"attempt": Infinity, "error": "x", "retryable": true}'), "attempt")
    result = json.dumps({"attempt": 1, "result": {"results": [ROW]}}).replace("1000", "NaN")
    refused(post_raw(client, f"{path}/result", result.encode()), "peak_bytes", says="finite")
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "running"


@pytest.mark.parametrize(
    "row,field",
    [
        ({**ROW, "peak_bytes": 10**30}, "peak_bytes"),
        ({**ROW, "batch_size": 2**63}, "batch_size"),
        ({**ROW, "tokens_per_s": float("inf")}, "tokens_per_s"),
        ({**ROW, "activation_bytes": -1}, "activation_bytes"),
        ({**ROW, "batch_size": 0}, "batch_size"),
        ({**ROW, "batch_size": -5}, "batch_size"),
        ({**ROW, "batch_size": 10**12}, "batch_size"),
        ({**ROW, "step_time_s": -0.5}, "step_time_s"),
        ({**ROW, "method": ""}, "method"),
        ({**ROW, "method": "m" * 10_000}, "method"),
        ({**ROW, "method": "lora"}, "method"),  # a method the job never asked for
        ({**ROW, "breakdown": {"activations": -3}}, "activations"),
        ({**ROW, "estimate_device": "x" * 20_000}, "estimate_device"),
        ({**ROW, "ranks": [{"rank": 0, "peak_bytes": 1, "note": "x"}]}, 0),
    ],
    ids=lambda v: str(v)[:40] if not isinstance(v, dict) else None,
)
def test_an_absurd_row_is_422_naming_the_field_and_the_worker_may_post_again(client, row, field):
    job_id, worker = running_job(client)
    refused(post_result(client, job_id, worker, {"results": [row]}), str(field))
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "running" and job["results"] == []
    assert [e["kind"] for e in events(client, job_id)] == ["created", "claimed"]
    # the lease is intact: the same worker posts the corrected result
    assert post_result(client, job_id, worker, {"results": [ROW]}).status_code == 204
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded"


def test_unknown_keys_and_too_many_rows_are_refused_quickly(client):
    job_id, worker = running_job(client)
    wide = {**ROW, **{f"k{i}": i for i in range(50_000)}}
    r = post_result(client, job_id, worker, {"results": [wide]})
    detail = refused(r, "0", says="unknown field 'k0'")
    assert "and 49995 more" in detail[0]["msg"] and len(r.content) < 5000
    r = post_result(client, job_id, worker, {"results": [ROW], "environment": {"note": "x" * 2_000_000}})
    refused(r, "environment", says="unknown field 'note'")
    # 2 methods x 2 batch sizes: 8 trial rows is the most the job's spec allows
    r = post_result(client, job_id, worker, {"results": [ROW] * 9})
    refused(r, "result", says="results has 9 rows; this job's spec produces at most 8")
    assert post_result(client, job_id, worker, {"results": [ROW]}).status_code == 204


def test_long_error_messages_are_kept_cut_not_refused(client):
    job_id, worker = running_job(client)
    row = {**ROW, "error": "E" * 100_000, "oom_message": "bad\x00byte"}
    result = {"results": [row], "errors": ["boom " * 10_000]}
    assert post_result(client, job_id, worker, result).status_code == 204
    job = client.get(f"/api/jobs/{job_id}").json()
    (stored,) = job["results"]
    assert stored["error"].startswith("E" * 4096) and stored["error"].endswith("[95904 more characters cut]")
    assert stored["oom_message"] == "bad\ufffdbyte"
    assert len(job["errors"][0]) < 4200 and job["status"] == "failed"


def test_a_real_profiler_result_is_accepted(client):
    """What `wtacrs-prof run examples/minimal.json` wrote, posted whole (id, status, spec included)."""
    job_id, worker = running_job(client, RECORDED["spec"])
    assert post_result(client, job_id, worker, RECORDED).status_code == 204
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and len(job["results"]) == len(RECORDED["results"])
    assert job["environment"]["torch_threads"] == RECORDED["environment"]["torch_threads"]


@pytest.mark.skipif(not GPU_REFERENCE.is_dir(), reason=f"no recorded GPU runs at {GPU_REFERENCE}")
def test_recorded_gpu_results_are_accepted(client):
    for path in sorted(GPU_REFERENCE.glob("*.json")):
        for recorded in json.loads(path.read_text()).values():
            gpus = 1 if recorded["spec"]["device"] == "cuda" else 0
            job_id, worker = running_job(client, recorded["spec"], capabilities={"gpus": gpus})
            r = post_result(client, job_id, worker, recorded)
            assert r.status_code == 204, (path.name, r.text[:2000])
            assert client.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded"


def _bounded(t, checked: bool = False, sized: bool = False) -> bool:
    """Whether a posted value of type `t` is bounded: numbers and strings by a Check on them, lists
    and dicts by a size (a Check's items, a max_length) and their items in turn; bool, a Literal and
    a Checked model (its fields are checked in turn) have no room."""
    origin, args = get_origin(t), get_args(t)
    if origin is Annotated:
        checks = [m for m in args[1:] if isinstance(m, Check)]
        return _bounded(args[0], checked or bool(checks), sized or any(c.items for c in checks))
    if origin in (Union, UnionType):
        return all(_bounded(a, checked, sized) for a in args)
    if origin in (list, dict):
        return sized and all(_bounded(a) for a in args)
    if t in (bool, type(None)) or origin is Literal or (isinstance(t, type) and issubclass(t, Checked)):
        return True
    return checked  # a number or a string


def test_every_field_a_worker_posts_is_bounded():
    models = [JobRows, *[m for m in vars(rows).values() if isinstance(m, type) and issubclass(m, Checked)]]
    unbounded = [
        f"{model.__name__}.{name}: {info.annotation}"
        for model in models
        for name, info in model.model_fields.items()
        if not _bounded(
            info.annotation,
            checked=any(isinstance(m, Check) for m in info.metadata),
            # JobRows' lists: its max_length, and per job JobRows._few_rows
            sized=any(isinstance(m, (Check, MaxLen)) for m in info.metadata),
        )
    ]
    assert not unbounded, unbounded
    assert len(models) > 10


# --- the API never writes NaN or Infinity ---


def test_legacy_non_finite_values_are_written_as_null(client, database_url):
    job_id, worker = running_job(client)
    assert post_result(client, job_id, worker, {"results": [ROW]}).status_code == 204
    with client.app.state.db.scope() as session:
        # stored before they were refused: PostgreSQL's JSON never took them, its float columns did
        session.execute(update(ResultRow).values(tokens_per_s=float("inf")))
        if database_url.startswith("sqlite"):
            session.execute(update(ResultRow).values(data={**ROW, "tokens_per_s": float("nan")}))
            session.execute(update(Job).values(outcome={"max_batch": [], "environment": {"cpu_count": float("inf")}}))
    for path in (
        "/api/results",
        f"/api/results?job_id={job_id}",
        "/api/results/export?format=json",
        "/api/results/compare?model=bert-tiny",
        f"/api/jobs/{job_id}",
    ):
        r = client.get(path)
        assert r.status_code == 200, (path, r.text)
        strict_json(r.text)
    (row,) = client.get("/api/results").json()
    assert row["tokens_per_s"] is None
    assert client.get(f"/api/jobs/{job_id}").json()["results"][0]["tokens_per_s"] in (None, 10.0)
    assert ",inf," not in client.get("/api/results/export").text


# --- submitters: their own jobs, no queue jumping, one cancel ---


def test_a_submit_token_acts_on_its_own_jobs_only(client):
    alice, bob = token(client, "alice", "submit"), token(client, "bob", "submit")
    mine = submit(client, who=alice)
    for action in ("cancel", "rerun"):
        r = client.post(f"/api/jobs/{mine}/{action}", headers=auth(bob))
        assert r.status_code == 403 and "only its own jobs" in r.json()["detail"], r.text
    assert all(e["actor"] != "bob" for e in events(client, mine))
    assert client.post(f"/api/jobs/{mine}/rerun", headers=auth(alice)).status_code == 201
    assert client.post(f"/api/jobs/{mine}/cancel", headers=auth(alice)).json()["status"] == "cancelled"
    theirs = submit(client, who=bob)
    assert client.post(f"/api/jobs/{theirs}/cancel", headers=auth()).json()["status"] == "cancelled"  # admin: any


def test_priority_above_the_default_is_for_admins(client):
    alice = token(client, "alice", "submit")
    r = client.post("/api/jobs", json=MINIMAL, params={"priority": 100}, headers=auth(alice))
    assert r.status_code == 403 and "needs an admin token" in r.json()["detail"]
    assert client.get(f"/api/jobs/{submit(client, who=alice, priority=-5)}").json()["priority"] == -5
    urgent = submit(client, priority=100)  # the admin token
    assert client.get(f"/api/jobs/{urgent}").json()["priority"] == 100
    with client.app.state.db.scope() as session:  # a job of alice's stored with priority 100 before this rule
        legacy = submit(client, who=alice)
        session.execute(update(Job).where(Job.id == legacy).values(priority=100))
    copy = client.post(f"/api/jobs/{legacy}/rerun", headers=auth(alice)).json()
    assert copy["priority"] == 0


def test_cancelling_a_finished_job_is_409(client):
    job_id, worker = running_job(client)
    assert post_result(client, job_id, worker, {"results": [ROW]}).status_code == 204
    r = client.post(f"/api/jobs/{job_id}/cancel", headers=auth())
    assert r.status_code == 409 and r.json()["detail"] == f"job {job_id} already succeeded; there is nothing to cancel"
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded"


@pytest.mark.parametrize("state", ["queued", "running"])
def test_ten_concurrent_cancels_write_one_event(database_url, state):
    app = create_app(Settings(database_url=database_url, admin_token=ADMIN))
    with live_server(app) as url, httpx.Client(base_url=url, headers=auth()) as http:
        job_id = http.post("/api/jobs", json=MINIMAL).json()["id"]
        if state == "running":
            worker = http.post("/api/workers/register", json={"name": "w"}).json()["id"]
            assert http.post(f"/api/workers/{worker}/claim").json()["job_id"] == job_id
        start, codes = threading.Barrier(10), []

        def cancel():
            with httpx.Client(base_url=url, headers=auth()) as mine:
                start.wait()
                codes.append(mine.post(f"/api/jobs/{job_id}/cancel").status_code)

        threads = [threading.Thread(target=cancel) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        kinds = [e["kind"] for e in http.get(f"/api/jobs/{job_id}/events").json()]
    if state == "queued":  # one ends it; the others find it finished
        assert kinds == ["created", "cancelled"] and sorted(codes) == [200] + [409] * 9, (kinds, codes)
    else:  # one flags it; asking again changes nothing
        assert kinds == ["created", "claimed", "cancel_requested"] and codes == [200] * 10, (kinds, codes)


# --- tokens: errors name the role; a revoked token's name can be given again ---


def test_role_errors_name_the_role_needed(client):
    worker = token(client, "w1", "worker")
    r = client.get("/api/tokens", headers=auth(worker))
    assert r.status_code == 403 and r.json()["detail"].endswith("needs a token with role admin (WTACRS_ADMIN_TOKEN)")
    r = client.post("/api/tokens", json={"name": "x", "role": "read"})
    assert r.status_code == 401 and "needs a token with role admin" in r.json()["detail"]
    r = client.post("/api/jobs", json=MINIMAL, headers=auth(worker))
    assert r.status_code == 403 and "needs a token with role submit or admin" in r.json()["detail"]


def test_a_revoked_tokens_name_can_be_given_again(client):
    old = token(client, "carol", "submit")
    assert client.delete("/api/tokens/carol", headers=auth()).status_code == 204
    assert "carol" not in [t["name"] for t in client.get("/api/tokens", headers=auth()).json()]
    new = token(client, "carol", "read")
    assert client.post("/api/jobs", json=MINIMAL, headers=auth(old)).status_code == 401
    assert client.get("/api/jobs", headers=auth(new)).status_code == 200
    assert {"name": "carol", "role": "read", "token": None} in client.get("/api/tokens", headers=auth()).json()
    r = client.post("/api/tokens", json={"name": "carol", "role": "read"}, headers=auth())
    assert r.status_code == 409  # a live token's name is still taken


def test_a_long_failure_is_recorded_cut_not_refused(client):
    job_id, worker = running_job(client)
    r = client.post(
        f"/api/workers/{worker}/jobs/{job_id}/fail",
        json={"attempt": 1, "error": "x" * 50_000, "retryable": False},
        headers=auth(),
    )
    assert r.status_code == 200 and r.json() == {"status": "failed"}, r.text
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"].endswith("[30000 more characters cut]")
