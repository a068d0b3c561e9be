"""/docs (Swagger UI) and /redoc with their scripts served by the app, as plotly.js is: FastAPI's
own pages load them from a CDN and stay blank without internet. The files come from the
fastapi-offline package (MIT; swagger-ui-dist and redoc builds), a dependency of the server."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = Path(fastapi_offline.__file__).parent / "static"
SERVED = {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"}
PREFIX = "/static/docs"
router = APIRouter(include_in_schema=False)
# These pages are FastAPI's own, not ours: Swagger UI is started by one inline <script> (its config:
# our OpenAPI URL), and both libraries set inline styles and draw icons from data: URLs; ReDoc runs
# its search in a worker made from a blob. So their policy differs from the dashboards' (main.PAGE_CSP)
# in exactly that: the one inline script the page was built with is allowed by its hash (no
# 'unsafe-inline' for scripts, no 'unsafe-eval'), and workers may come from blobs. Everything
# still loads from this server only, and nothing a client stored is on these pages.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    """`page` with `DOCS_CSP`, its own inline scripts allowed by their sha256 and no other."""
    digests = (hashlib.sha256(code.encode()).digest() for code in _INLINE_SCRIPT.findall(page.body.decode()))
    hashes = "".join(f" 'sha256-{base64.b64encode(d).decode()}'" for d in digests)
    page.headers["Content-Security-Policy"] = DOCS_CSP.format(hashes=hashes)
    return page


@router.get(PREFIX + "/{name}")
def asset(name: str) -> FileResponse:
    if name not in SERVED:
        raise HTTPException(404, f"no documentation asset {name!r}; there are {sorted(SERVED)}")
    return FileResponse(ASSETS / name, headers={"Cache-Control": "max-age=86400"})


@router.get("/docs")
def swagger(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=root + request.app.openapi_url,
        title=request.app.title + " · API",
        swagger_js_url=f"{root}{PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{root}{PREFIX}/favicon.png",
        # the default validator badge would call validator.swagger.io; a token given to Authorize
        # stays in the page's memory (persistAuthorization would keep it in localStorage)
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
    )
    return _with_policy(page)


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_redoc_html(
        openapi_url=root + request.app.openapi_url,
        title=request.app.title + " · API",
        redoc_js_url=f"{root}{PREFIX}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{PREFIX}/favicon.png",
        with_google_fonts=False,
    )
    # ReDoc's menu shows a logo from cdn.redoc.ly (and hides it when that fails): the policy's
    # img-src keeps the browser from asking, so the page makes no request beyond this server
    return _with_policy(page)
