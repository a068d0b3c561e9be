"""Every timestamp in an API response is UTC ISO-8601 ending in "Z", on both stores (SQLite hands
back naive datetimes, PostgreSQL ones in the session's time zone)."""

import csv
import datetime as dt
import io
import json
import re
from pathlib import Path

from tests.app.conftest import auth

MINIMAL = json.loads((Path(__file__).parents[1] / "data" / "minimal_spec.json").read_text())
ROW = {"method": "full", "batch_size": 2, "mode": "cpu", "peak_bytes": 1000, "activation_bytes": 10, "oom": False}
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z$")


def stamps(value, key=""):
    """Every value under a key that names a time, anywhere in a JSON document."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in stamps(v, k)]
    if isinstance(value, list):
        return [s for v in value for s in stamps(v, key)]
    return [value] if key in {"created_at", "started_at", "finished_at", "at", "last_seen"} and value else []


def test_one_timestamp_format_everywhere(client):
    created = client.post("/api/jobs", json=MINIMAL, headers=auth()).json()
    job_id = created["id"]
    worker = client.post("/api/workers/register", json={"name": "w"}, headers=auth()).json()
    client.post(f"/api/workers/{worker['id']}/claim", headers=auth())
    result = {"attempt": 1, "result": {"results": [ROW], "environment": {"device_name": "cpu"}}}
    assert client.post(f"/api/workers/{worker['id']}/jobs/{job_id}/result", json=result, headers=auth()).is_success
    documents = {
        "created": created,
        "worker": worker,
        "job": client.get(f"/api/jobs/{job_id}").json(),
        "list": client.get("/api/jobs").json(),
        "events": client.get(f"/api/jobs/{job_id}/events").json(),
        "results": client.get("/api/results").json(),
        "export": client.get("/api/results/export", params={"format": "json"}).json(),
        "csv": list(csv.DictReader(io.StringIO(client.get("/api/results/export").text))),
    }
    found = {name: stamps(doc) for name, doc in documents.items()}
    assert all(found.values()), found  # each document has some
    bad = {name: [s for s in values if not ISO_Z.match(s)] for name, values in found.items()}
    assert not any(bad.values()), bad
    job = documents["job"]
    assert job["created_at"] == created["created_at"]  # the same instant read back, not shifted
    # a filter time with an offset means that instant; one without is UTC like the stored ones
    at = dt.datetime.fromisoformat(documents["results"][0]["created_at"])
    for since, rows in ((at - dt.timedelta(seconds=1), 1), (at + dt.timedelta(seconds=1), 0)):
        for text in (since.isoformat(), since.astimezone(dt.timezone(dt.timedelta(hours=5))).isoformat()):
            assert len(client.get("/api/results", params={"since": text}).json()) == rows, text
        naive = since.replace(tzinfo=None).isoformat()
        assert len(client.get("/api/results", params={"since": naive}).json()) == rows, naive


def test_a_time_out_of_range_in_utc_is_a_422(client):
    # year 1 at +22:01 is before year 1 in UTC: found by the fuzzer as a 500
    r = client.get("/api/results", params={"until": "0001-01-01T00:00:46+22:01"})
    assert r.status_code == 422 and "out of range" in r.text
