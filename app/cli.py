"""The `wtacrs-prof` entry point: the profiler's commands (run, worker, submit) plus `serve`, which
starts this app. It lives here so that the profiler never imports the app; the server itself
still never imports torch (the local worker is a separate process)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
from typing import Annotated

import typer

from profiler.cli import app as cli
from profiler.cli import console


def open_browser(url: str) -> bool:
    """Open `url` in a browser; on a machine without one (a headless server), say so and where to go."""
    import webbrowser

    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        # soft_wrap: never break the URL across lines
        console.print(f"--open: no browser could be opened on this machine; visit {url} yourself", soft_wrap=True)
    return opened


def _die_with_parent() -> None:
    from profiler.runner import die_with_parent  # torch-free: it only asks the kernel

    die_with_parent()


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8000,
    db: Annotated[
        str | None, typer.Option(help="database URL (default: DATABASE_URL or sqlite:///./wtacrs.db)")
    ] = None,
    worker: Annotated[bool, typer.Option(help="also start one local worker")] = True,
    open_page: Annotated[bool, typer.Option("--open/--no-open", help="open the browser once up")] = False,
) -> None:
    """Start the API (migrations applied first) and, unless --no-worker, one local worker."""
    import uvicorn

    if db:
        os.environ["DATABASE_URL"] = db
    token = os.environ.get("WTACRS_ADMIN_TOKEN")
    if not token:
        token = os.environ["WTACRS_ADMIN_TOKEN"] = "local_" + secrets.token_urlsafe(24)
        console.print(f"admin token for this session (set WTACRS_ADMIN_TOKEN to choose one): [bold]{token}[/bold]")
    from app.main import create_app

    url = f"http://{host}:{port}"
    child = None
    if worker:  # a separate process: the server never imports torch
        env = {**os.environ, "WTACRS_TOKEN": token}
        child = subprocess.Popen(
            [sys.executable, "-m", "profiler.cli", "worker", "--api", url, "--name", "local"],
            env=env,
            preexec_fn=_die_with_parent,  # uvicorn re-raises SIGTERM/SIGINT, so `finally` may never run
        )
    if open_page:
        threading.Timer(2.0, open_browser, args=(url + "/",)).start()
    console.print(f"serving on {url}  (API docs: {url}/docs)")
    try:
        uvicorn.run(create_app(), host=host, port=port, log_level="warning")
    finally:
        if child is not None:
            child.terminate()
            child.wait(timeout=30)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
