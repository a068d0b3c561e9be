"""Dashboards in headless Debian Chromium, driven by Playwright; screenshots kept in the test output."""

import contextlib
import json
import os
from pathlib import Path

import pytest

from tests.app.live_server import live_server

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("WTACRS_SCREENSHOTS", ROOT / "out" / "screenshots"))
TOKEN = "browser-admin"
ROWS = [
    {
        "method": m,
        "batch_size": b,
        "mode": "cpu",
        "peak_bytes": int((900 + f * 40 * b) * 2**20),
        "first_step_peak_bytes": int((400 + f * 40 * b) * 2**20),
        "activation_bytes": int(f * 40 * b * 2**20),
        "tokens_per_s": 1000.0 * b / (1 + 0.1 * b),
        "oom": b == 64 and m == "full",
        "error": None,
        "breakdown": {
            "parameters": 400 * 2**20,
            "gradients": 0,
            "optimizer_state": 800 * 2**20,
            "activations": int(f * 40 * b * 2**20),
            "other": 10 * 2**20,
        },
    }
    for m, f in (("full", 1.0), ("wtacrs@0.3", 0.33))
    for b in (8, 16, 32, 64)
]
# a tiny model: peaks near 96 MiB, full and lora 0.003 MiB apart (a zoomed axis made that look
# large), wtacrs and lora+wtacrs identical (one line hid the other), batch 2..4 (ticks fell at 2.5)
SMALL_METHODS = (("full", 0.0), ("lora", 0.003), ("wtacrs@0.3", -0.3), ("lora+wtacrs@0.3", -0.3))
SMALL_ROWS = [
    {
        "method": m,
        "batch_size": b,
        "mode": "cpu",
        "peak_bytes": int((96 + d + 0.4 * b) * 2**20),
        "tokens_per_s": 500.0 * b,
        "oom": False,
        "error": None,
        "breakdown": {
            "parameters": int(30 * 2**20),
            "gradients": int(30 * 2**20),
            "optimizer_state": int(35 * 2**20),
            "activations": int((1 + d + 0.4 * b) * 2**20),
            "other": 0,
        },
    }
    for m, d in SMALL_METHODS
    for b in (2, 3, 4)
]
# a measured 2-rank FSDP job: rank 0 holds FSDP's padded shard, a little more than rank 1
PARALLEL_ROWS = [
    {
        "method": m,
        "batch_size": b,
        "mode": "cpu",
        "strategy": "fsdp",
        "world_size": 2,
        "peak_bytes": int((60 + f * b) * 2**20),
        "ranks": [
            {"rank": 0, "peak_bytes": int((60 + f * b) * 2**20), "step_time_s": 0.2},
            {"rank": 1, "peak_bytes": int((58 + f * b) * 2**20), "step_time_s": 0.21},
        ],
        "peak_spread_bytes": 2 * 2**20,
        "oom": False,
        "error": None,
    }
    for m, f in (("full", 4.0), ("wtacrs@0.3", 2.0))
    for b in (2, 4)
]
LAYERS = [f"transformer.h.{i}.mlp.{n}" for i in (0, 1) for n in ("c_fc", "c_proj")]
FIDELITY = [
    {
        "method": "wtacrs@0.3",
        "batch_size": 4,
        "layer": layer,
        "relative_error": 0.4 + 0.05 * i,
        "relative_bias": 0.01,
        "relative_variance": 0.16,
        "draws": 8,
        "exact_norm": 2.5,
    }
    for i, layer in enumerate(LAYERS)
] + [
    # the exact gradient is zero here: the old profiler form (1e-30, an error of 0.0) and the new (nulls)
    {
        "method": "lora+wtacrs@0.3",
        "batch_size": 4,
        "layer": layer,
        "draws": 8,
        **(
            {"relative_error": 0.0, "relative_bias": 0.0, "relative_variance": 0.0, "exact_norm": 1e-30}
            if i < 2
            else {"relative_error": None, "relative_bias": None, "relative_variance": None, "exact_norm": 0.0}
        ),
    }
    for i, layer in enumerate(LAYERS)
]
ATTRIBUTION = [
    {
        "method": m,
        "batch_size": 64,
        "mode": "cpu",
        "total_bytes": int((2 + 3 * f) * 2**30),
        "groups": [
            {"module": "transformer.h.*.mlp", "bytes": int(3 * f * 2**30), "ops": {"linear": int(3 * f * 2**30)}},
            {"module": "transformer.h.*.attn", "bytes": 2 * 2**30, "ops": {"sdpa": 2 * 2**30}},
        ],
    }
    for m, f in (("full", 1.0), ("wtacrs@0.3", 0.33))
]
CONVERGENCE = [
    {
        "method": m,
        "mode": "cpu",
        "seed": 0,
        "data": "train.tsv",
        "train_examples": 1600,
        "val_examples": 872,
        "epochs": 2,
        "steps": 200,
        "batch_size": 16,
        "seq_len": 64,
        "losses": [0.7 * (1 - i / 300) + 0.01 * (i % 7) for i in range(200)],
        "evals": [
            {"epoch": 1, "step": 100, "accuracy": acc - 0.02, "loss": 0.4},
            {"epoch": 2, "step": 200, "accuracy": acc, "loss": 0.33},
        ],
        "accuracy": acc,
        "val_loss": 0.33,
        "train_time_s": 300.0,
        "tokens_per_s": 850.0,
        "peak_bytes": peak * 2**20,
        "peak_measured_over": "first 2 steps",
        "cache_bytes": 0,
    }
    for m, acc, peak in (("full", 0.861, 420), ("wtacrs@0.3", 0.858, 300))
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app

    db = tmp_path_factory.mktemp("browser") / "web.db"
    app = create_app(Settings(database_url=f"sqlite:///{db}", admin_token=TOKEN))
    stack = contextlib.ExitStack()
    url = stack.enter_context(live_server(app))
    with TestClient(app) as api:  # finished jobs, through the worker protocol
        h = {"Authorization": f"Bearer {TOKEN}"}
        w = api.post("/api/workers/register", json={"name": "w"}, headers=h).json()["id"]

        def finish(spec, result):
            job_id = api.post("/api/jobs", json=spec, headers=h).json()["id"]
            attempt = api.post(f"/api/workers/{w}/claim", headers=h).json()["attempt"]
            result = {"environment": {"device_name": "cpu (x86_64)"}, "errors": [], **result}
            api.post(f"/api/workers/{w}/jobs/{job_id}/result", json={"attempt": attempt, "result": result}, headers=h)
            return job_id

        spec = json.loads((ROOT / "examples" / "minimal.json").read_text()) | {"batch_sizes": [8, 16, 32, 64]}
        max_batch = [{"method": m, "max_batch_size": n, "mode": "cpu"} for m, n in (("full", 48), ("wtacrs@0.3", 140))]
        job_id = finish(spec, {"results": ROWS, "max_batch": max_batch, "attribution": ATTRIBUTION})
        spec = json.loads((ROOT / "examples" / "accuracy-minilm-sst2.json").read_text())
        convergence_id = finish(spec, {"convergence": CONVERGENCE})
        spec = json.loads((ROOT / "examples" / "minimal.json").read_text()) | {
            "model": "gpt2-tiny",
            "methods": [m for m, _ in SMALL_METHODS],
            "batch_sizes": [2, 3, 4],
            "measurements": ["peak_memory", "throughput", "fidelity"],
        }
        small_id = finish(spec, {"results": SMALL_ROWS, "fidelity": FIDELITY})
        spec = json.loads((ROOT / "examples" / "minimal.json").read_text()) | {
            "model": "llama-tiny",
            "measurements": ["peak_memory", "max_batch_size"],
            "target_memory_gb": 1,
            "parallel": {"strategy": "fsdp", "world_size": 2},
        }
        max_batch = [{"method": m, "max_batch_size": n, "mode": "cpu"} for m, n in (("full", 6), ("wtacrs@0.3", 9))]
        parallel_id = finish(spec, {"results": PARALLEL_ROWS, "max_batch": max_batch})
    with stack, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield {
            "url": url,
            "job_id": job_id,
            "convergence_id": convergence_id,
            "small_id": small_id,
            "parallel_id": parallel_id,
            "browser": browser,
        }
        browser.close()


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def ticks(page, chart, axis):
    return [t.text_content() for t in page.locator(f"#chart-{chart} .{axis}tick text").all()]


def assert_titles_clear_of_the_modebar(page, charts):
    for chart in charts:
        page.hover(f"#chart-{chart} .main-svg")
        bar = page.locator(f"#chart-{chart} .modebar")
        bar.wait_for(state="visible")
        assert bar.locator("[data-title='Share chart...']").count() == 0  # no upload to Plotly Cloud
        t, m = page.locator(f"#chart-{chart} .gtitle").bounding_box(), bar.bounding_box()
        apart = t["y"] >= m["y"] + m["height"] or t["x"] + t["width"] <= m["x"]
        assert apart, (chart, t, m)


def test_job_page_draws_its_charts(site):
    page = site["browser"].new_page(viewport={"width": 1300, "height": 900})
    page.goto(f"{site['url']}/jobs/{site['job_id']}")
    for chart in ("memory", "max_batch", "throughput", "breakdown", "frontier", "attribution"):
        page.wait_for_selector(f"#chart-{chart} .main-svg", timeout=15000)
        assert page.locator(f"#chart-{chart} .trace").count() > 0, chart
    assert page.locator("#chart-memory .legendtext", has_text="full (OOM)").count() == 1
    assert "transformer.h.*.mlp" in page.inner_text("#table-attribution")
    assert page.locator("#table-frontier tr").count() >= 2
    assert "succeeded" in page.locator("#status").inner_text()
    assert ticks(page, "memory", "x") == ["8", "16", "32", "64"]  # log2 spacing, a tick per size run
    assert ticks(page, "memory", "y")[0] == "0"
    assert "peak memory (GiB)" in page.text_content("#chart-memory .g-ytitle")
    assert "1.25 GiB" in page.inner_text("#table-breakdown")  # full's activations at batch 32
    shot(page, "job")
    assert_titles_clear_of_the_modebar(page, ("memory", "max_batch", "throughput", "breakdown"))


def test_small_job_shows_small_differences_small_and_undefined_fidelity_as_na(site):
    page = site["browser"].new_page(viewport={"width": 1300, "height": 900})
    page.goto(f"{site['url']}/jobs/{site['small_id']}")
    for chart in ("memory", "throughput", "breakdown", "fidelity"):
        page.wait_for_selector(f"#chart-{chart} .main-svg", timeout=15000)
    assert ticks(page, "memory", "x") == ["2", "3", "4"]  # not 2.5 and 3.5
    assert ticks(page, "memory", "y")[0] == "0"  # 0.003 MiB apart looks like it
    assert "peak memory (MiB)" in page.text_content("#chart-memory .g-ytitle")
    # identical throughput for all four methods: every line still draws its points
    for i in range(4):
        assert page.locator(f"#chart-throughput .scatterlayer .trace:nth-child({i + 1}) .point").count() == 3
    assert page.locator("#chart-breakdown .annotation-text", has_text="activations").count() == 4
    na = "N/A (exact gradient is zero)"
    assert page.locator("#chart-fidelity .legendtext", has_text=na).count() == 1
    undefined = page.evaluate("document.getElementById('chart-fidelity').data[1].y")
    assert undefined == [None] * 4  # the old 1e-30 rows and the new null rows alike: gaps, not 0.0
    row = page.locator("#table-fidelity tr", has_text="lora+wtacrs@0.3").inner_text()
    assert row.count(na) == 4 and "0.0" not in row
    assert "0.475" in page.locator("#table-fidelity tr", has_text="wtacrs@0.3").first.inner_text()
    shot(page, "job-small")
    assert_titles_clear_of_the_modebar(page, ("memory", "throughput", "breakdown", "fidelity"))


def test_convergence_job_draws_loss_curves_and_accuracy_vs_memory(site):
    page = site["browser"].new_page(viewport={"width": 1300, "height": 900})
    page.goto(f"{site['url']}/jobs/{site['convergence_id']}")
    for chart in ("loss", "accuracy"):
        page.wait_for_selector(f"#chart-{chart} .main-svg", timeout=15000)
    # one line and one held-out marker series per method, on the same axes
    assert page.locator("#chart-loss .trace").count() == 4
    assert page.locator("#chart-accuracy .trace").count() == 2
    table = page.inner_text("#convergence")
    assert "86.10%" in table and "85.80%" in table
    assert page.locator("#chart-memory").inner_html() == ""  # no memory rows in this job: nothing drawn
    shot(page, "job-convergence")


def test_parallel_job_draws_memory_per_rank(site):
    page = site["browser"].new_page(viewport={"width": 1300, "height": 900})
    page.goto(f"{site['url']}/jobs/{site['parallel_id']}")
    for chart in ("memory", "ranks", "max_batch"):
        page.wait_for_selector(f"#chart-{chart} .main-svg", timeout=15000)
    assert page.locator("#chart-ranks .trace.bars").count() == 2  # one per method
    assert ticks(page, "ranks", "x") == ["rank 0", "rank 1"]
    assert page.text_content("#chart-ranks .gtitle") == "Peak memory per rank · fsdp×2, batch 4 (measured)"
    title = "Largest micro-batch per rank that fits in 1 GiB · fsdp×2 · length 64 · fp32"
    assert page.text_content("#chart-max_batch .gtitle") == title
    assert "fsdp×2" in page.inner_text("h1")
    assert page.locator("#chart-breakdown").inner_html() == ""  # these rows have no breakdown: nothing drawn
    row = page.locator("#table-ranks tr", has_text="wtacrs@0.3").inner_text()
    assert "68.0 MiB" in row and "66.0 MiB" in row and "2.00 MiB" in row
    shot(page, "job-parallel")
    assert_titles_clear_of_the_modebar(page, ("memory", "ranks", "max_batch"))


def test_submit_form_creates_a_job_and_shows_validation_errors(site):
    page = site["browser"].new_page(viewport={"width": 1300, "height": 900})
    page.goto(site["url"] + "/jobs")
    page.fill("#token", TOKEN)
    spec = json.loads(page.input_value("#spec"))
    page.fill("#spec", json.dumps({**spec, "model": "bert-huge"}))
    page.click("#submit-form button")
    page.wait_for_selector("#submit-error:not([hidden])")
    assert "unknown model preset 'bert-huge'" in page.inner_text("#submit-error")
    shot(page, "submit-error")
    page.fill("#spec", json.dumps(spec))
    page.click("#submit-form button")
    page.wait_for_url("**/jobs/*")
    page.wait_for_selector("#status")  # the job exists as soon as the 201 arrives (committed first)
    assert page.inner_text("#status") == "queued"
    page.goto(site["url"] + "/jobs")
    assert page.locator("#jobs tr").count() == 6  # header + the four finished jobs + the new one
    shot(page, "jobs")


def test_compare_and_history_pages(site):
    page = site["browser"].new_page(viewport={"width": 1300, "height": 900})
    page.goto(site["url"] + "/compare?model=bert-tiny")
    page.wait_for_selector("#chart-compare .main-svg")
    assert page.locator("#pivot tr").count() == 3
    assert "OOM" in page.inner_text("#pivot")
    assert "1.21x less memory than full" in page.inner_text("#pivot")  # wtacrs@0.3 at batch 8: 1220 MiB / 1005.6 MiB
    page.select_option("select[name=method]", ["wtacrs@0.3"])
    page.select_option("select[name=baseline]", "wtacrs@0.3")
    page.click("form.filters button")
    page.wait_for_selector("#chart-compare .main-svg")
    assert page.locator("#pivot tr").count() == 2  # header + the one method picked
    page.goto(site["url"] + f"/compare?model=bert-tiny&jobs={site['job_id']}")
    assert page.locator("#pivot tr").count() == 3
    page.goto(site["url"] + "/compare?model=bert-tiny&jobs=nosuchjob")
    assert "No results" in page.inner_text("#pivot")
    page.goto(site["url"] + "/compare?model=bert-tiny")
    shot(page, "compare")
    csv = page.request.get(site["url"] + "/compare.csv?model=bert-tiny").text().splitlines()
    assert csv[0].startswith("model,mode,dtype,method,batch_size,peak_bytes,oom,ratio_to_baseline")
    assert len(csv) == 1 + 8 and any(",wtacrs@0.3,8," in line and ",1.21" in line for line in csv)
    page.goto(site["url"] + "/history?model=bert-tiny&metric=peak_bytes")
    page.wait_for_selector("#chart-history .main-svg")
    assert page.locator("#chart-history .trace").count() == 2
    full_gib = page.evaluate("document.getElementById('chart-history').data[0].y[0]")
    assert full_gib == pytest.approx((900 + 40 * 32) / 1024)  # batch 32: the OOM row at 64 is no point
    assert page.text_content("#chart-history .gtitle") == "Peak memory over time"
    shot(page, "history")
    page.goto(site["url"] + "/history?model=gpt2-tiny&metric=peak_bytes")
    page.wait_for_selector("#chart-history .main-svg")
    assert "peak memory (MiB)" in page.text_content("#chart-history .g-ytitle")  # not 0.0945 GiB
    assert ticks(page, "history", "y")[0] == "0"
    shot(page, "history-small")
