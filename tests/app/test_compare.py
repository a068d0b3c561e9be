"""One comparison rule for the API and the compare page: the latest row per (model, mode, dtype,
method, batch), chosen in SQL; ratios to the baseline's latest row; OOM rows kept, without ratio."""

import csv
import io

from tests.app.conftest import auth
from tests.app.test_queue import ROW, register, submit

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
