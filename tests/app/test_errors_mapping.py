"""Services raise domain errors (app/services/errors.py) and never touch HTTP; app/errors.py alone
maps each to its status. Checked on the source, then through real requests, one per error class."""

import ast
import json
from pathlib import Path

import pytest

from app.errors import DOMAIN_STATUS, as_http
from app.models import Job
from app.queue import LeaseLost
from app.services import errors
from tests.app.conftest import auth

SERVICES = Path(__file__).resolve().parents[2] / "app" / "services"
MINIMAL = json.loads((Path(__file__).parents[1] / "data" / "minimal_spec.json").read_text())
DOMAIN_ERRORS = [
    c
    for c in vars(errors).values()
    if isinstance(c, type) and issubclass(c, errors.DomainError) and c.__module__ == errors.__name__
]


@pytest.mark.parametrize("path", sorted(SERVICES.glob("*.py")), ids=lambda p: p.name)
def test_no_service_imports_the_web_framework_or_raises_http_errors(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        else:
            modules = []
        assert not any(m.split(".")[0] in ("fastapi", "starlette") for m in modules), f"{path.name}:{node.lineno}"
        if isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            assert name != "HTTPException", f"{path.name}:{node.lineno} uses HTTPException"


def test_every_domain_error_has_one_status():
    assert set(DOMAIN_ERRORS) <= set(DOMAIN_STATUS)
    expected = {
        errors.NotFound: 404,
        errors.Forbidden: 403,
        errors.Conflict: 409,
        errors.Invalid: 422,
        errors.TooMany: 429,
        LeaseLost: 409,
    }
    assert {c: DOMAIN_STATUS[c] for c in expected} == expected
    http = as_http(errors.TooMany("slow down", retry_after=60))
    assert (http.status_code, http.detail, http.headers) == (429, "slow down", {"Retry-After": "60"})

    class Gone(errors.NotFound):  # an unlisted subclass takes its base's status
        pass

    assert as_http(Gone("x")).status_code == 404


# --- through real requests: the same status, JSON and headers as the HTTPExceptions they replace ---


def _token(client, name, role="submit"):
    r = client.post("/api/tokens", json={"name": name, "role": role}, headers=auth())
    assert r.status_code == 201, r.text
    return r.json()["token"]


def _submit(client, who=None):
    r = client.post("/api/jobs", json=MINIMAL, headers=auth(who) if who else auth())
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _worker(client, who=None):
    r = client.post("/api/workers/register", json={"name": "w"}, headers=auth(who) if who else auth())
    assert r.status_code == 201, r.text
    return r.json()["id"]


def not_found(make_client):
    r = make_client().get("/api/jobs/nosuchjob")
    return r, {"detail": "no job with id 'nosuchjob'"}


def forbidden(make_client):
    client = make_client()
    job_id, alice = _submit(client), _token(client, "alice")
    r = client.post(f"/api/jobs/{job_id}/cancel", headers=auth(alice))
    detail = (
        f"job {job_id} was submitted by another token; a submit token may cancel only its own jobs "
        "(an admin token may cancel any)"
    )
    return r, {"detail": detail}


def conflict(make_client):
    client = make_client()
    job_id = _submit(client)
    assert client.post(f"/api/jobs/{job_id}/cancel", headers=auth()).status_code == 200
    r = client.post(f"/api/jobs/{job_id}/cancel", headers=auth())
    return r, {"detail": f"job {job_id} already cancelled; there is nothing to cancel"}


def invalid(make_client):
    client = make_client()
    job_id = _submit(client)
    with client.app.state.db.scope() as session:  # stored before a bound it breaks was added
        session.get(Job, job_id).spec = {**MINIMAL, "methods": [f"wtacrs@0.{i + 1:02d}" for i in range(40)]}
    r = client.post(f"/api/jobs/{job_id}/rerun", headers=auth())
    assert r.json()["detail"].startswith(f"job {job_id}'s spec is no longer valid (methods: ")
    return r, r.json()


def too_many(make_client):
    client = make_client(max_queued_per_token=1)
    busy = _token(client, "busy")
    _submit(client, busy)
    r = client.post("/api/jobs", json=MINIMAL, headers=auth(busy))
    assert r.headers["retry-after"] == "60"
    detail = (
        "token 'busy' has 1 jobs queued or running; the limit is 1 per token (WTACRS_MAX_QUEUED_PER_TOKEN). "
        "Wait for some to finish, or cancel some, then submit again"
    )
    return r, {"detail": detail}


def lease_lost(make_client):
    client = make_client()
    job_id, worker = _submit(client), _worker(client)
    assert client.post(f"/api/workers/{worker}/claim", headers=auth()).json()["attempt"] == 1
    r = client.post(f"/api/workers/{worker}/jobs/{job_id}/heartbeat", json={"attempt": 2}, headers=auth())
    return r, {"detail": f"job {job_id} attempt 2 is not held by worker {worker}"}


def worker_not_found(make_client):
    r = make_client().post("/api/workers/nosuch/jobs/j/heartbeat", json={"attempt": 1}, headers=auth())
    return r, {"detail": "no worker 'nosuch': register first"}


def worker_forbidden(make_client):
    client = make_client()
    worker, other = _worker(client), _token(client, "other", "worker")
    r = client.post(f"/api/workers/{worker}/claim", headers=auth(other))
    return r, {"detail": "this worker was registered with another token"}


CASES = {
    not_found: (errors.NotFound, 404),
    forbidden: (errors.Forbidden, 403),
    conflict: (errors.Conflict, 409),
    invalid: (errors.Invalid, 422),
    too_many: (errors.TooMany, 429),
    lease_lost: (LeaseLost, 409),
    worker_not_found: (errors.NotFound, 404),
    worker_forbidden: (errors.Forbidden, 403),
}


def test_every_domain_error_is_exercised_below():
    covered = {cls for cls, _ in CASES.values()}
    assert set(DOMAIN_ERRORS) - {errors.DomainError} <= covered and LeaseLost in covered


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__)
def test_a_domain_error_answers_as_its_http_error_did(make_client, case):
    r, body = case(make_client)
    _, status = CASES[case]
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == body


def test_a_dashboard_page_answers_a_domain_error_with_a_page(client):
    r = client.get("/jobs/nosuchjob")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "<h1>404 " in r.text and "no job with id &#x27;nosuchjob&#x27;" in r.text
