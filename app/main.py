"""The FastAPI application: migrations at start, routes, body limits, clean errors, offline docs."""

from __future__ import annotations

import contextlib
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DataError, OperationalError, SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import docs, errors
from app.api.bodies import document_bodies
from app.api.routes import jobs, results, tokens, workers
from app.config import Settings, get_settings
from app.db import Database
from app.limits import BodySizeLimit
from app.web import fits
from app.web import routes as web

ROOT = Path(__file__).resolve().parents[1]
# What an HTML page of ours may load and run: scripts from this server only, so nothing a client
# stored can run even where a page forgot to escape it (no inline script, no event-handler
# attribute, no eval; dash.js starts each page from its markup). Inline styles stay allowed:
# Plotly sets them on every element it draws and injects its own <style> rules. A page that needs
# another policy sets its own (app.docs: /docs and /redoc) and keeps it.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


class SecurityHeaders:
    """`PAGE_CSP` on every HTML response that has no policy of its own, and on every response
    `nosniff` (a JSON body holding stored markup is never read as a page) and no referrer to
    other sites. A plain ASGI middleware: it adds headers to the start message and nothing else."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                if b"referrer-policy" not in names:
                    headers.append((b"referrer-policy", b"same-origin"))
                html = any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers)
                if html and b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def migrate(db: Database) -> None:
    """alembic upgrade head, on this database."""
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "app" / "migrations"))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    db = Database(settings.database_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        migrate(db)
        yield
        db.engine.dispose()

    app = FastAPI(
        title="WTA-CRS profiler",
        version="0.1.0",
        lifespan=lifespan,
        description="Queue profiling jobs, read their results, compare methods.",
        docs_url=None,  # app.docs serves both pages with local scripts
        redoc_url=None,
    )
    app.state.settings, app.state.db = settings, db
    for router in (jobs.router, workers.router, results.router, tokens.router, fits.router, web.router, docs.router):
        app.include_router(router)
    document_bodies(app)
    app.add_middleware(
        BodySizeLimit,
        limit=settings.max_body_bytes,
        larger=[(workers.RESULT_PATH, max(settings.max_result_bytes, settings.max_body_bytes))],
    )
    app.add_middleware(SecurityHeaders)  # outermost: error pages get the policy too
    errors.install(app)

    @app.exception_handler(OperationalError)
    async def _db_down(request: Request, exc: OperationalError):
        return JSONResponse({"detail": "database unavailable; try again shortly"}, status_code=503)

    @app.exception_handler(DataError)
    async def _bad_value(request: Request, exc: DataError):
        # the database refused a value the API let through (a NUL character in text on PostgreSQL)
        reason = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
        return JSONResponse({"detail": f"a value was refused by the database: {reason}"}, status_code=422)

    @app.exception_handler(SQLAlchemyError)
    async def _db_error(request: Request, exc: SQLAlchemyError):
        return JSONResponse({"detail": f"database error ({type(exc).__name__}); nothing was changed"}, status_code=500)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        with db.scope() as session:
            session.execute(text("SELECT 1"))
        return {"status": "ok", "database": db.engine.dialect.name}

    return app
