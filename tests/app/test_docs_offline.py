"""/docs and /redoc work with no internet: their scripts come from the app, like plotly.js."""

import os
import re
from pathlib import Path

import pytest

from app.config import Settings
from app.main import create_app
from tests.app.live_server import live_server

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("WTACRS_SCREENSHOTS", ROOT / "out" / "screenshots"))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_pages_load_nothing_from_elsewhere(client, page):
    html = client.get(page).text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", html) + re.findall(r"url: ?'([^']+)'", html)
    assert urls and not [u for u in urls if "//" in u], urls  # every asset on this server
    for url in urls:
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 1000, url
    assert "cdn" not in html.lower() and "fonts.googleapis" not in html


def test_only_the_documentation_assets_are_served(client):
    assert client.get("/static/docs/swagger-ui.css").headers["content-type"].startswith("text/css")
    r = client.get("/static/docs/core.py")  # a file of the package, not an asset
    assert r.status_code == 404 and "no documentation asset" in r.text


@pytest.fixture(scope="module")
def offline_site(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    db = tmp_path_factory.mktemp("docs") / "docs.db"
    with live_server(create_app(Settings(database_url=f"sqlite:///{db}", admin_token="docs-admin"))) as url:
        yield url


@pytest.mark.browser
@pytest.mark.parametrize(
    "page,ready",
    [
        ("/docs", "#operations-jobs-create_job_api_jobs_post"),  # Swagger UI's operation list
        ("/redoc", "[data-section-id='tag/jobs']"),  # ReDoc's rendered sections
    ],
)
def test_doc_pages_render_with_the_internet_blocked(offline_site, page, ready):
    from playwright.sync_api import sync_playwright

    blocked = []

    def only_local(route):
        if route.request.url.startswith(offline_site):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.route("**/*", only_local)
        tab.goto(offline_site + page)
        tab.wait_for_selector(ready, state="visible", timeout=20_000)
        assert "POST" in tab.inner_text("body") and "/api/jobs" in tab.inner_text("body")
        tab.screenshot(path=str(SHOTS / f"offline{page.replace('/', '-')}.png"))
        browser.close()
    assert not errors, errors
    assert not blocked, f"{page} tried to reach {blocked}"
