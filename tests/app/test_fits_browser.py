"""The "what fits" pages in headless Debian Chromium (Playwright): the form submits an estimate and
lands on its answer, the answer draws, the target line's label clears the title, the jobs list
refreshes itself; no script error, console error or policy violation on the way."""

from __future__ import annotations

import pytest

from app.web import fits
from tests.app.test_fits_page import Form, estimate_result

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
TOKEN = "fits-admin"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    import contextlib
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app
    from tests.app.live_server import live_server

    db = tmp_path_factory.mktemp("fits") / "web.db"
    app = create_app(Settings(database_url=f"sqlite:///{db}", admin_token=TOKEN))
    stack = contextlib.ExitStack()
    url = stack.enter_context(live_server(app))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        spec = Form(api.get("/").text).spec()
        w = api.post("/api/workers/register", json={"name": "w"}).json()["id"]
        job_id = api.post("/api/jobs", json=spec).json()["id"]
        attempt = api.post(f"/api/workers/{w}/claim").json()["attempt"]
        result = {"environment": {"device_name": "estimate"}, "errors": [], **estimate_result(spec)}
        assert api.post(
            f"/api/workers/{w}/jobs/{job_id}/result", json={"attempt": attempt, "result": result}
        ).is_success
    with stack, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        yield {"url": url, "finished": job_id, "browser": browser}
        browser.close()


def shot(page, name):
    from tests.app.test_browser import SHOTS

    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def watched(site):
    """A page, and what it reports: script errors, console errors, policy violations."""
    page = site["browser"].new_page(viewport={"width": 1300, "height": 900})
    seen = {"errors": [], "console": [], "csp": []}
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))

    def console(m):
        if "Content Security Policy" in m.text or "Refused to" in m.text:
            seen["csp"].append(m.text)
        elif m.type == "error":
            seen["console"].append(m.text)

    page.on("console", console)
    return page, seen


def test_the_form_submits_an_estimate_and_lands_on_its_answer(site):
    import httpx

    page, seen = watched(site)
    page.goto(site["url"] + "/")
    page.select_option("#fit-model", "")  # custom: a family with overrides
    assert page.is_visible("#fit-overrides")
    page.fill("#fit-overrides", "{not json")
    page.fill("#token", TOKEN)
    page.click("#fit-submit")
    page.wait_for_selector("#fit-error:not([hidden])")
    assert "The overrides are not valid JSON" in page.inner_text("#fit-error")
    page.fill("#fit-overrides", '{"num_hidden_layers": 1000}')
    page.click("#fit-submit")
    # a locator's wait, not wait_for_function: its polling evaluates a string, which the page's
    # Content Security Policy (no 'unsafe-eval') refuses whenever the first check is false
    page.locator("#fit-error", has_text="422").wait_for()
    assert "at most 256 layers can be built and traced" in page.inner_text("#fit-error")  # the contract's words
    page.select_option("#fit-model", "bert-base")
    assert not page.is_visible("#fit-overrides")
    page.fill("#fit-seq-len", "256")
    page.select_option("#fit-dtype", "bf16-weights")
    page.click("button.gpu-size[data-gb='40']")
    assert page.input_value("#fit-memory") == "40"
    assert page.get_attribute("button.gpu-size[data-gb='40']", "aria-pressed") == "true"
    assert page.get_attribute("button.gpu-size[data-gb='80']", "aria-pressed") == "false"
    shot(page, "fits-form")
    page.click("#fit-submit")
    page.wait_for_url("**/fits/*")
    job_id = page.url.rsplit("/", 1)[1]
    assert page.inner_text("#fit-heading") == "What fits in 40 GiB · bert-base · length 256 · bf16-weights"
    assert page.inner_text("#status") == "queued" and page.inner_text("#queue-position") == "#1 in queue"
    shot(page, "fits-queued")
    assert page.get_attribute("#job-link", "href") == f"/jobs/{job_id}"
    spec = httpx.get(f"{site['url']}/api/jobs/{job_id}").json()["spec"]
    assert spec["device"] == "estimate" and spec["target_memory_gb"] == 40 and spec["dtype"] == "bf16-weights"
    assert spec["methods"] == list(fits.METHODS) and spec["measurements"] == list(fits.MEASUREMENTS)
    assert spec["max_batch"]["upper"] == fits.MAX_BATCH_UPPER  # what dash.js read from the form
    page.wait_for_timeout(2500)  # one poll of the queued job
    assert page.inner_text("#queue-position") == "#1 in queue"
    assert page.evaluate("sessionStorage.getItem('wtacrs-token')") == TOKEN
    httpx.post(f"{site['url']}/api/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {TOKEN}"})
    page.wait_for_selector("#status.status-cancelled", timeout=10_000)  # the page reloads once it ends
    assert not seen["errors"] and not seen["csp"], seen
    # the refused submission's 422 is the one failed request
    assert all("422" in m for m in seen["console"]), seen["console"]


def test_an_answer_draws_its_bars_and_the_target_label_stays_clear_of_the_title(site):
    page, seen = watched(site)
    page.goto(f"{site['url']}/fits/{site['finished']}")
    page.wait_for_selector("#chart-fits .main-svg", timeout=15_000)
    assert page.locator("#chart-fits .point").count() == len(fits.METHODS)
    assert (
        page.text_content("#chart-fits .gtitle") == "Largest batch that fits in 80 GiB · length 128 · fp32 (estimated)"
    )
    assert page.locator("#fits tr").count() == 1 + len(fits.METHODS)
    assert page.locator("#fits td", has_text=fits.NOT_MEASURED).count() == len(fits.METHODS)
    shot(page, "fits-answer")
    page.goto(f"{site['url']}/jobs/{site['finished']}")
    page.wait_for_selector("#chart-memory .main-svg", timeout=15_000)
    label = page.locator("#chart-memory .shape-label-text")
    assert label.text_content() == "target 80 GiB"
    title, box = page.locator("#chart-memory .gtitle").bounding_box(), label.bounding_box()
    plot = page.locator("#chart-memory .nsewdrag").bounding_box()  # the plot area
    assert title["y"] + title["height"] <= box["y"], (title, box)  # below the title, not under it
    assert plot["y"] <= box["y"] and box["y"] + box["height"] <= plot["y"] + plot["height"], (plot, box)
    shot(page, "job-estimate-target")
    assert not seen["errors"] and not seen["csp"] and not seen["console"], seen


def test_the_jobs_list_refreshes_itself(site, monkeypatch):
    import httpx

    from app.web import routes

    monkeypatch.setattr(routes, "JOBS_REFRESH_MS", 300)
    page, seen = watched(site)
    page.goto(site["url"] + "/jobs")
    assert page.get_attribute("#jobs-list", "data-refresh-ms") == "300"
    spec = Form(httpx.get(site["url"] + "/").text).spec()
    job_id = httpx.post(site["url"] + "/api/jobs", json=spec, headers={"Authorization": f"Bearer {TOKEN}"}).json()["id"]
    page.wait_for_selector(f"#jobs a[href='/jobs/{job_id}']", timeout=5_000)  # no reload: the list was swapped
    assert "in queue" in page.locator("#jobs tr", has_text=job_id).inner_text()
    httpx.post(f"{site['url']}/api/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {TOKEN}"})
    assert not seen["errors"] and not seen["csp"] and not seen["console"], seen
