"""One comparison rule for the API and the compare page: the latest row per (model, mode, dtype,
strategy, world_size, compiled, method, batch), chosen in SQL; ratios to the baseline's latest row
run the same way; OOM rows kept, without ratio."""

import csv
import io
import json
import re

from app.models import ResultRow
from app.services.results import COLUMNS, series
from app.web import charts
from tests.app.conftest import auth
from tests.app.test_queue import ROW, register, submit

MIB = 2**20


def finish(client, worker, rows, spec=None, ran_as=None):
    """Submits MINIMAL (with `spec`'s fields), claims it and reports `rows`, each with `ran_as`'s fields."""
    job_id = submit(client, **(spec or {}))
    attempt = client.post(f"/api/workers/{worker}/claim", headers=auth()).json()["attempt"]
    result = {"results": [{**r, **(ran_as or {})} for r in rows], "environment": {"device_name": "cpu"}, "errors": []}
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
    assert "OOM" in page and "(2.50x)" not in page  # the ratios read one way round, in words
    assert "2.5x less memory than full" in page and "1.8x full&#39;s tokens/s" in page


def test_the_baseline_comes_from_the_same_selection(client):
    w = register(client)
    finish(client, w, [row("full", 2, 400), row("wtacrs@0.3", 2, 200)])
    only = client.get("/api/results/compare", params={"model": "bert-tiny", "method": "wtacrs@0.3"}).json()
    assert len(only) == 1 and only[0]["memory_ratio_to_baseline"] is None
    both = client.get("/api/results/compare", params={"model": "bert-tiny", "method": ["wtacrs@0.3", "full"]}).json()
    assert [c["memory_ratio_to_baseline"] for c in both] == [1.0, 2.0]


def finish_parallel(client, worker, rows, strategy, world_size):
    parallel = {"strategy": strategy, "world_size": world_size}
    return finish(client, worker, rows, {"parallel": parallel}, parallel)


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
    assert "full · fsdp×8" in page and "wtacrs@0.3 · fsdp×8" in page and "1.25x less memory than full" in page
    assert json.dumps("full · fsdp×8 [cpu]") in page  # the chart's series
    page = client.get("/compare", params={"model": "bert-tiny", "strategy": "", "world_size": ""})
    assert page.status_code == 200  # the form's "any"
    assert "full · fsdp×8" not in client.get("/compare", params={"model": "bert-tiny", "world_size": "1"}).text
    table = list(csv.DictReader(io.StringIO(client.get("/compare.csv", params={"model": "bert-tiny"}).text)))
    cells = {(t["method"], t["strategy"], t["world_size"]): t for t in table}
    assert cells["full", "fsdp", "8"]["job_id"] == fsdp and cells["full", "none", "1"]["job_id"] == single


def finish_compiled(client, worker, rows):
    ran_as = {"compiled": True, "compile_backend": "inductor", "compile_s": 3.5}
    return finish(client, worker, rows, {"compile": True}, ran_as)


def test_compiled_and_eager_runs_of_a_method_are_separate_series(client):
    w = register(client)
    eager = finish(client, w, [row("full", 2, 400, 100.0), row("wtacrs@0.3", 2, 200, 90.0)])
    compiled = finish_compiled(client, w, [row("full", 2, 300, 150.0), row("wtacrs@0.3", 2, 100, 120.0)])
    # an eager run measured after the compiled one replaces the eager full row, not the compiled one
    eager2 = finish(client, w, [row("full", 2, 450, 110.0)])
    compare = client.get("/api/results/compare", params={"model": "bert-tiny"}).json()
    got = {c["series"]: c for c in compare}
    assert list(got) == ["full", "full · compiled", "wtacrs@0.3", "wtacrs@0.3 · compiled"]
    assert [c["compiled"] for c in compare] == [False, True, False, True]
    assert got["full"]["peak_bytes"] == 450 * MIB and got["full · compiled"]["peak_bytes"] == 300 * MIB
    # each against the baseline run the same way: compiled wtacrs vs compiled full, eager vs eager
    assert got["wtacrs@0.3"]["memory_ratio_to_baseline"] == 450 / 200
    assert got["wtacrs@0.3"]["speed_ratio_to_baseline"] == 90.0 / 110.0
    assert got["wtacrs@0.3 · compiled"]["memory_ratio_to_baseline"] == 3.0
    assert got["wtacrs@0.3 · compiled"]["speed_ratio_to_baseline"] == 120.0 / 150.0
    assert got["full · compiled"]["memory_ratio_to_baseline"] == 1.0

    only = client.get("/api/results/compare", params={"model": "bert-tiny", "compiled": "true"}).json()
    assert [(c["series"], c["memory_ratio_to_baseline"]) for c in only] == [
        ("full · compiled", 1.0),
        ("wtacrs@0.3 · compiled", 3.0),
    ]
    eager_only = client.get("/api/results/compare", params={"model": "bert-tiny", "compiled": "false"}).json()
    assert [(c["series"], c["memory_ratio_to_baseline"]) for c in eager_only] == [
        ("full", 1.0),
        ("wtacrs@0.3", 450 / 200),
    ]
    rows = client.get("/api/results", params={"compiled": True}).json()  # SQL written by hand on PostgreSQL
    assert sorted((r["job_id"], r["method"], r["compiled"]) for r in rows) == [
        (compiled, "full", True),
        (compiled, "wtacrs@0.3", True),
    ]
    assert list(rows[0]) == list(COLUMNS) and list(COLUMNS)[-4:] == [
        "strategy",
        "world_size",
        "compiled",
        "model_label",
    ]
    eager_rows = client.get("/api/results", params={"compiled": "false"}).json()
    assert {r["job_id"] for r in eager_rows} == {eager, eager2} and len(eager_rows) == 3
    assert not any(r["compiled"] for r in eager_rows)
    for bad in ({"compiled": "maybe"}, {"compiled": "2"}):
        r = client.get("/api/results/compare", params={"model": "bert-tiny", **bad})
        assert r.status_code == 422 and "compiled" in r.text, r.text
        assert client.get("/api/results", params=bad).status_code == 422
        assert client.get("/compare", params={"model": "bert-tiny", **bad}).status_code == 422
        assert client.get("/compare.csv", params={"model": "bert-tiny", **bad}).status_code == 422

    exported = list(csv.reader(io.StringIO(client.get("/api/results/export", params={"compiled": "true"}).text)))
    assert exported[0] == list(COLUMNS) and exported[0][-2:] == ["compiled", "model_label"]
    assert sorted(r[-2] for r in exported[1:]) == ["True", "True"]
    everything = list(csv.DictReader(io.StringIO(client.get("/api/results/export").text)))
    assert sorted((r["job_id"], r["compiled"]) for r in everything) == sorted(
        [(eager, "False"), (eager, "False"), (compiled, "True"), (compiled, "True"), (eager2, "False")]
    )
    as_json = client.get("/api/results/export", params={"format": "json", "job_id": compiled}).json()
    assert [r["compiled"] for r in as_json] == [True, True]

    page = client.get("/compare", params={"model": "bert-tiny"}).text
    assert "wtacrs@0.3 · compiled" in page and "3x less memory than full" in page
    assert "2.25x less memory than full" in page
    assert json.dumps("full · compiled [cpu]") in page  # the chart's series
    assert client.get("/compare", params={"model": "bert-tiny", "compiled": ""}).status_code == 200  # "any"
    history = client.get("/history", params={"model": "bert-tiny"}).text  # one line per series there too
    assert json.dumps("wtacrs@0.3 · compiled · fp32 · cpu") in history
    assert json.dumps("wtacrs@0.3 · fp32 · cpu") in history
    eager_page = client.get("/compare", params={"model": "bert-tiny", "compiled": "false"}).text
    assert "full · compiled" not in eager_page and "2.25x less memory than full" in eager_page
    assert '<option value="false" selected>eager</option>' in eager_page
    table = list(
        csv.DictReader(io.StringIO(client.get("/compare.csv", params={"model": "bert-tiny", "compiled": "true"}).text))
    )
    assert sorted((t["method"], t["job_id"], t["ratio_to_baseline"], t["compiled"]) for t in table) == [
        ("full", compiled, "1.0", "True"),
        ("wtacrs@0.3", compiled, "3.0", "True"),
    ]
    unfiltered = list(csv.DictReader(io.StringIO(client.get("/compare.csv", params={"model": "bert-tiny"}).text)))
    assert {(t["method"], t["compiled"]) for t in unfiltered} == {
        ("full", "False"),
        ("full", "True"),
        ("wtacrs@0.3", "False"),
        ("wtacrs@0.3", "True"),
    }


def test_series_names_compose():
    def named(**how):
        return series(ResultRow(method="full", **{"strategy": "none", "world_size": 1, "compiled": False, **how}))

    assert named() == "full"
    assert named(compiled=True) == "full · compiled"
    assert named(strategy="fsdp", world_size=8) == "full · fsdp×8"
    assert named(strategy="fsdp", world_size=8, compiled=True) == "full · fsdp×8 · compiled"


def _figures(page: str) -> dict:
    start = page.index('<script type="application/json" id="figures">')
    return json.loads(page[page.index(">", start) + 1 : page.index("</script>", start)])


def _colours(figure: dict) -> dict[str, tuple]:
    """method -> (colour, dash) of its line traces (the OOM markers, always red, left out)."""
    out = {}
    for trace in figure["data"]:
        if trace.get("line") and "(OOM)" not in trace["name"]:
            look = (trace["line"]["color"], trace["line"]["dash"])
            assert out.setdefault(charts.method_name(trace["name"]), look) == look, trace["name"]
    return out


def test_a_method_has_one_colour_and_dash_on_the_job_and_compare_pages(client):
    """Issue 27: the compare chart (series named 'lora [cpu]') draws each method as the job page does,
    whatever other methods share the figure: the style is a function of the method's name alone."""
    w = register(client)
    methods = ["full", "lora", "wtacrs@0.3", "offload", "lora+checkpointing"]
    rows = [row(m, b, 100 + 10 * i + b, tokens=50.0 + i) for i, m in enumerate(methods) for b in (2, 4)]
    job = finish(client, w, rows, {"methods": methods})
    job_page = _figures(client.get(f"/jobs/{job}").text)
    compare_page = _figures(client.get("/compare", params={"model": "bert-tiny"}).text)
    # on the compare page with only two of the methods selected: the same look still
    two = _figures(client.get("/compare", params={"model": "bert-tiny", "method": ["offload", "lora"]}).text)
    on_job = _colours(job_page["memory"])
    assert set(on_job) == set(methods)
    assert _colours(job_page["throughput"]) == on_job
    assert _colours(compare_page["compare"]) == on_job
    assert _colours(two["compare"]) == {m: on_job[m] for m in ("offload", "lora")}
    assert len(set(on_job.values())) == len(methods)  # five methods, five looks
    assert on_job["full"] == charts.METHOD_STYLES["full"]
    assert charts.RED not in {c for c, _ in on_job.values()}  # red means OOM


def test_the_largest_batch_per_method_across_jobs_one_chart_per_set_of_conditions(client):
    """The compare page's largest-batch view: the job page's bars (the batch, then its ratio to full
    in words; the target, length and dtype in the title), a group per set of conditions, the newest
    job's answer per method in each; the filters apply."""
    from tests.app.test_fits_page import LARGEST, estimate_result, finish, form

    w = register(client)
    spec = form(client).spec(model="bert-tiny", seq_len=64)
    first = finish(client, w, spec, estimate_result(spec))
    newer = estimate_result(spec, {m: 2 * n for m, n in LARGEST.items()})
    latest = finish(client, w, spec, newer)  # the same conditions: its answers replace the first's
    small = form(client).spec(model="bert-tiny", seq_len=64, memory=24, methods=["full", "wtacrs@0.3"])
    smaller = finish(client, w, small, estimate_result(small))
    html = client.get("/compare?model=bert-tiny").text
    got = json.loads(re.search(r'id="figures">(.*?)</script>', html, re.S).group(1))
    assert set(got) == {"compare", "max_batch_0", "max_batch_1"} and 'id="chart-max_batch_1"' in html
    newest, older = got["max_batch_0"], got["max_batch_1"]  # the newest job's conditions first
    assert newest["layout"]["title"]["text"] == "Largest batch that fits in 24 GiB · length 64 · fp32 (estimated)"
    assert newest["data"][0]["x"] == ["full", "wtacrs@0.3"] and newest["data"][0]["y"] == [24, 52]
    assert newest["data"][0]["text"] == ["", "2.17x full's batch"]
    assert older["layout"]["title"]["text"] == "Largest batch that fits in 80 GiB · length 64 · fp32 (estimated)"
    assert older["data"][0]["y"] == [2 * n for n in LARGEST.values()]
    table = re.search(r'<table id="max-batch">(.*?)</table>', html, re.S).group(1)
    assert "estimated · 24 GiB · length 64 · fp32" in table and f"/jobs/{latest}" in table
    assert f"/jobs/{smaller}" in table and f"/jobs/{first}" not in table
    only = client.get("/compare?model=bert-tiny&method=lora&mode=estimate").text
    assert json.loads(re.search(r'id="figures">(.*?)</script>', only, re.S).group(1))["max_batch_0"]["data"][0][
        "x"
    ] == ["lora"]
    assert "No job of this model searched the largest batch" in client.get("/compare?model=bert-tiny&mode=cpu").text
    assert "No job of this model searched" in client.get("/compare?model=bert-tiny&strategy=fsdp").text
