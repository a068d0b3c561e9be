"""wtacrs-prof: profile fine-tuning methods from the shell."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .spec import JobSpec

# Plain (click-style) help: typer's rich help panel prints a value type beside every option, flags
# included, so `--help <bool>` and `--open/--no-open <bool>` read as if they took a value.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Profile WTA-CRS and other fine-tuning methods.",
)
console = Console(stderr=True)
out_console = Console(width=None if sys.stdout.isatty() else 160)  # pipes and files get the whole table
MIB = 2**20


def load_spec(path: str) -> JobSpec:
    """Read and validate a spec file ('-' for stdin); exit 2 with readable messages when it is bad."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as err:
        console.print(f"[red]cannot read spec {path}: {err.strerror}[/red]")
        raise typer.Exit(2) from None
    try:
        return JobSpec.model_validate(json.loads(text))
    except json.JSONDecodeError as err:
        console.print(f"[red]spec {path} is not valid JSON: {err}[/red]")
        raise typer.Exit(2) from None
    except ValidationError as err:
        console.print(f"[red]spec {path} is invalid:[/red]")
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(spec)"
            console.print(f"  {where}: {e['msg']}", markup=False)  # a key may hold "[red]"
        raise typer.Exit(2) from None


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


def _mib(v) -> str:
    return "-" if v is None else f"{v / MIB:,.0f}"


def print_table(result: dict) -> None:
    if result["results"] or not result.get("convergence"):
        print_rows(result)
    if result.get("convergence"):
        table = Table(title=f"job {result['id']} · {result['status']} · convergence")
        for col in ("method", "steps", "accuracy %", "val loss", "peak MiB", "cache KiB", "tokens/s", "train s"):
            table.add_column(col)
        for c in result["convergence"]:
            table.add_row(
                c["method"],
                str(c["steps"]),
                f"{100 * c['accuracy']:.2f}",
                f"{c['val_loss']:.4f}",
                _mib(c["peak_bytes"]),
                f"{c['cache_bytes'] / 1024:,.1f}",
                f"{c['tokens_per_s']:,.0f}",
                f"{c['train_time_s']:,.0f}",
            )
        out_console.print(table)
    for m in result["max_batch"]:
        out_console.print(f"max batch {m['method']}: {m['max_batch_size']} ({len(m['probes'])} probes)")
    for e in result["errors"]:
        console.print(f"[red]{e.splitlines()[0]}[/red]")


def print_rows(result: dict) -> None:
    table = Table(title=f"job {result['id']} · {result['status']}")
    for col in ("method", "batch", "mode", "peak MiB", "1st-step MiB", "activations MiB", "tokens/s", "oom", "error"):
        table.add_column(col)
    for r in result["results"]:
        tps = r.get("tokens_per_s")
        table.add_row(
            r["method"],
            str(r["batch_size"]),
            r["mode"],
            _mib(r.get("peak_bytes")),
            _mib(r.get("first_step_peak_bytes")),
            _mib(r.get("activation_bytes")),
            "-" if tps is None else f"{tps:,.0f}",
            "yes" if r["oom"] else "",
            (r.get("error") or "")[:60],
        )
    out_console.print(table)


@app.callback()
def _root() -> None:
    """Profile WTA-CRS and other fine-tuning methods: memory, largest batch, tokens/s, fidelity."""


@app.command()
def run(
    spec: Annotated[str, typer.Argument(help="job spec JSON file, or - for stdin")],
    out: Annotated[Path, typer.Option("--out", help="where to write the result JSON")],
    isolate: Annotated[bool, typer.Option(help="run each method in a child process with the spec's time limit")] = True,
) -> None:
    """Run a job locally and write its JSON result."""
    job = load_spec(spec)
    from .runner import run_job

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(f"profiling {job.model_name}", total=None)

        def progress(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, total=total, description=message)

        result = run_job(job, progress=progress, isolate=isolate)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    console.print(f"wrote {out}")
    raise typer.Exit(0 if result["status"] == "succeeded" else 1)


@app.command()
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
    import os
    import secrets
    import subprocess
    import threading

    import uvicorn

    if db:
        os.environ["DATABASE_URL"] = db
    token = os.environ.get("WTACRS_ADMIN_TOKEN")
    if not token:
        token = os.environ["WTACRS_ADMIN_TOKEN"] = "local_" + secrets.token_urlsafe(24)
        console.print(f"admin token for this session (set WTACRS_ADMIN_TOKEN to choose one): [bold]{token}[/bold]")
    from app.main import create_app

    from .runner import die_with_parent

    url = f"http://{host}:{port}"
    child = None
    if worker:  # a separate process: the server never imports torch
        env = {**os.environ, "WTACRS_TOKEN": token}
        child = subprocess.Popen(
            [sys.executable, "-m", "profiler.cli", "worker", "--api", url, "--name", "local"],
            env=env,
            preexec_fn=die_with_parent,  # uvicorn re-raises SIGTERM/SIGINT, so `finally` may never run
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


@app.command("worker")
def worker_cmd(
    api: Annotated[str, typer.Option(help="server URL, e.g. http://gpu-server:8000")],
    token: Annotated[str | None, typer.Option(help="worker token (or set WTACRS_TOKEN)")] = None,
    name: Annotated[str | None, typer.Option(help="shown in the server's worker list")] = None,
    once: Annotated[bool, typer.Option(help="run at most one job, then exit")] = False,
    poll: Annotated[float, typer.Option(help="seconds between claims when the queue is empty")] = 2.0,
) -> None:
    """Claim jobs from a server and run them here, until stopped."""
    import logging
    import os

    from .worker import serve_forever

    token = token or os.environ.get("WTACRS_TOKEN")
    if not token:
        console.print("[red]a worker needs a token: --token T or WTACRS_TOKEN[/red]")
        raise typer.Exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the job log
    serve_forever(api, token, name=name, poll_s=poll, once=once)


@app.command()
def submit(
    spec: Annotated[str, typer.Argument(help="job spec JSON file, or - for stdin")],
    api: Annotated[str, typer.Option(help="server URL")],
    token: Annotated[str | None, typer.Option(help="submit token (or set WTACRS_TOKEN)")] = None,
) -> None:
    """Submit a job to a server and print its id."""
    import os

    import httpx

    job = load_spec(spec)
    token = token or os.environ.get("WTACRS_TOKEN")
    if not token:
        console.print("[red]submitting needs a token: --token T or WTACRS_TOKEN[/red]")
        raise typer.Exit(2)
    try:
        r = httpx.post(
            api.rstrip("/") + "/api/jobs",
            json=job.model_dump(mode="json"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.TransportError as err:
        console.print(f"[red]cannot reach {api}: {err}[/red]")
        raise typer.Exit(1) from None
    if r.status_code != 201:
        console.print(f"[red]server refused the job ({r.status_code}): {r.text[:1000]}[/red]")
        raise typer.Exit(1)
    print(r.json()["id"])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
