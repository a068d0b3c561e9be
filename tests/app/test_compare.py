"""One comparison rule for the API and the compare page: the latest row per (model, mode, dtype,
strategy, world_size, method, batch), chosen in SQL; ratios to the baseline's latest row run the
same way; OOM rows kept, without ratio."""

import csv
import io
import json

from tests.app.conftest import auth
from tests.app.test_queue import MINIMAL, ROW, register, submit

MIB = 2**20


def finish(client, worker, rows):
    job_id = submit(client)
    attempt = client.post(f"/api/workers/{worker}/claim", headers=auth()).json()["attempt"]
    result = {"results": rows, "environment": {"device_name": "cpu"}, "errors": []}
    r = client.post(
        f"/api/workers/{worker}/jobs/{job_id}/result", json={"attempt": attempt, "result": result}, headers=auth()
    )
    assert r.status_code == 204, r.text
    return job_id


def row(method, batch, peak_mib, tokens=100.0, oom=False):
    peak = None if oom else peak_mib * MIB
    return {**ROW, "method": method, "batch_size": batch, "peak_bytes": peak, "tokens_per_s": tokens, "oom": oom}


def test_api_and_pivot_agree_on_latest_rows_ratios_and_oom(client):
    w = register(client)
    finish(client, w, [row("full", 2, 400), row("full", 4, 800), row("wtacrs@0.3", 2, 200, 90.0)])
    # measured again later: these replace the first job's rows at the same keys
    newer = finish(client, w, [row("full", 2, 500, 50.0), row("wtacrs@0.3", 4, 0, oom=True)])
    compare = client.get("/api/results/compare", params={"model": "bert-tiny"}).json()
    got = {(c["method"], c["batch_size"]): c for c in compare}
    assert [(c["batch_size"], c["method"]) for c in compare] == [
        (2, "full"),
        (2, "wtacrs@0.3"),
        (4, "full"),
        (4, "wtacrs@0.3"),
    ]
    assert got["full", 2]["peak_bytes"] == 500 * MIB and got["full", 2]["memory_ratio_to_baseline"] == 1.0
    assert got["wtacrs@0.3", 2]["memory_ratio_to_baseline"] == 2.5  # 500 MiB (the newer full) / 200 MiB
    assert got["wtacrs@0.3", 2]["speed_ratio_to_baseline"] == 90.0 / 50.0
    oom = got["wtacrs@0.3", 4]
    assert oom["oom"] is True and oom["memory_ratio_to_baseline"] is None and oom["speed_ratio_to_baseline"] is None

    # paging the comparison never loses a baseline: ratios are computed before the page is cut
    pages = [
        client.get("/api/results/compare", params={"model": "bert-tiny", "limit": 1, "offset": i}).json()
        for i in range(5)
    ]
    assert [p[0] for p in pages[:4]] == compare and pages[4] == []

    table = list(csv.DictReader(io.StringIO(client.get("/compare.csv", params={"model": "bert-tiny"}).text)))
    cells = {(t["method"], int(t["batch_size"])): t for t in table}
    assert cells.keys() == got.keys()
    for key, c in got.items():
        ratio = c["memory_ratio_to_baseline"]
        assert cells[key]["ratio_to_baseline"] == ("" if ratio is None else str(ratio)), key
    assert cells["full", 2]["job_id"] == newer and cells["wtacrs@0.3", 4]["oom"] == "True"
    rows = client.get("/api/results", params={"job_id": newer}).json()  # SQL written by hand on PostgreSQL
    assert len(rows) == 2 and {r["job_id"] for r in rows} == {newer}
    page = client.get("/compare", params={"model": "bert-tiny"}).text
    assert "OOM" in page and "(2.50x)" in page


def test_the_baseline_comes_from_the_same_selection(client):
    w = register(client)
    finish(client, w, [row("full", 2, 400), row("wtacrs@0.3", 2, 200)])
    only = client.get("/api/results/compare", params={"model": "bert-tiny", "method": "wtacrs@0.3"}).json()
    assert len(only) == 1 and only[0]["memory_ratio_to_baseline"] is None
    both = client.get("/api/results/compare", params={"model": "bert-tiny", "method": ["wtacrs@0.3", "full"]}).json()
    assert [c["memory_ratio_to_baseline"] for c in both] == [1.0, 2.0]


def finish_parallel(client, worker, rows, strategy, world_size):
    spec = {**MINIMAL, "parallel": {"strategy": strategy, "world_size": world_size}}
    job_id = client.post("/api/jobs", json=spec, headers=auth()).json()["id"]
    attempt = client.post(f"/api/workers/{worker}/claim", headers=auth()).json()["attempt"]
    ran = [{**r, "strategy": strategy, "world_size": world_size} for r in rows]
    result = {"results": ran, "environment": {"device_name": "cpu"}, "errors": []}
    r = client.post(
        f"/api/workers/{worker}/jobs/{job_id}/result", json={"attempt": attempt, "result": result}, headers=auth()
    )
    assert r.status_code == 204, r.text
    return job_id


def test_one_device_and_parallel_runs_of_a_method_are_separate_series(client):
    w = register(client)
    single = finish(client, w, [row("full", 2, 400), row("wtacrs@0.3", 2, 200)])
    fsdp = finish_parallel(client, w, [row("full", 2, 100), row("wtacrs@0.3", 2, 80)], "fsdp", 8)
    ddp = finish_parallel(client, w, [row("full", 2, 390)], "ddp", 2)
    compare = client.get("/api/results/compare", params={"model": "bert-tiny"}).json()
    got = {c["series"]: c for c in compare}
    assert list(got) == ["full", "full · ddp×2", "full · fsdp×8", "wtacrs@0.3", "wtacrs@0.3 · fsdp×8"]
    assert got["full"]["peak_bytes"] == 400 * MIB and got["full · fsdp×8"]["peak_bytes"] == 100 * MIB
    assert (got["full · fsdp×8"]["strategy"], got["full · fsdp×8"]["world_size"]) == ("fsdp", 8)
    assert (got["full"]["strategy"], got["full"]["world_size"]) == ("none", 1)
    # each series against the baseline run the same way
    assert got["wtacrs@0.3"]["memory_ratio_to_baseline"] == 2.0
    assert got["wtacrs@0.3 · fsdp×8"]["memory_ratio_to_baseline"] == 100 / 80
    assert got["full · ddp×2"]["memory_ratio_to_baseline"] == 1.0

    only = client.get("/api/results/compare", params={"model": "bert-tiny", "strategy": "fsdp"}).json()
    assert [c["series"] for c in only] == ["full · fsdp×8", "wtacrs@0.3 · fsdp×8"]
    ones = client.get("/api/results/compare", params={"model": "bert-tiny", "world_size": 1}).json()
    assert [c["series"] for c in ones] == ["full", "wtacrs@0.3"]
    rows = client.get("/api/results", params={"strategy": "ddp", "world_size": 2}).json()
    assert [(r["job_id"], r["strategy"], r["world_size"]) for r in rows] == [(ddp, "ddp", 2)]
    assert {r["job_id"] for r in client.get("/api/results", params={"strategy": "none"}).json()} == {single}
    r = client.get("/api/results/compare", params={"model": "bert-tiny", "strategy": "zero3"})
    assert r.status_code == 422 and "strategy" in r.text
    assert client.get("/api/results", params={"world_size": 0}).status_code == 422

    page = client.get("/compare", params={"model": "bert-tiny"}).text
    assert "full · fsdp×8" in page and "wtacrs@0.3 · fsdp×8" in page and "(1.25x)" in page
    assert json.dumps("full · fsdp×8 [cpu]") in page  # the chart's series
    page = client.get("/compare", params={"model": "bert-tiny", "strategy": "", "world_size": ""})
    assert page.status_code == 200  # the form's "any"
    assert "full · fsdp×8" not in client.get("/compare", params={"model": "bert-tiny", "world_size": "1"}).text
    table = list(csv.DictReader(io.StringIO(client.get("/compare.csv", params={"model": "bert-tiny"}).text)))
    cells = {(t["method"], t["strategy"], t["world_size"]): t for t in table}
    assert cells["full", "fsdp", "8"]["job_id"] == fsdp and cells["full", "none", "1"]["job_id"] == single
