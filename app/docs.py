"""/docs (Swagger UI) and /redoc with their scripts served by the app, as plotly.js is: FastAPI's
own pages load them from a CDN and stay blank without internet. The files come from the
fastapi-offline package (MIT; swagger-ui-dist and redoc builds), a dependency of the server."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = Path(fastapi_offline.__file__).parent / "static"
SERVED = {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"}
PREFIX = "/static/docs"
router = APIRouter(include_in_schema=False)


@router.get(PREFIX + "/{name}")
def asset(name: str) -> FileResponse:
    if name not in SERVED:
        raise HTTPException(404, f"no documentation asset {name!r}; there are {sorted(SERVED)}")
    return FileResponse(ASSETS / name, headers={"Cache-Control": "max-age=86400"})


@router.get("/docs")
def swagger(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=root + request.app.openapi_url,
        title=request.app.title + " · API",
        swagger_js_url=f"{root}{PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{root}{PREFIX}/favicon.png",
        # the default validator badge would call validator.swagger.io
        swagger_ui_parameters={"validatorUrl": None},
    )


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
    # ReDoc's menu shows a logo from cdn.redoc.ly (and hides it when that fails): keep the browser
    # from asking, so the page makes no request beyond this server
    page.headers["Content-Security-Policy"] = "img-src 'self' data: blob:"
    return page
