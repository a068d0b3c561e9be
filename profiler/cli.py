"""wtacrs-prof: profile fine-tuning methods from the shell. `serve` is added by `app.cli`, the\nentry point, so that the profiler never imports the app."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from contract.results import JobResult, JobStatus
from contract.spec import JobSpec

from .tables import tables

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


def print_table(result: JobResult) -> None:
    for table in tables(result):
        out_console.print(table)
    compiled = [r for r in result.results if getattr(r, "compiled", False)]
    if compiled:
        backends = ", ".join(sorted({r.compile_backend for r in compiled if r.compile_backend})) or "backend unknown"
        out_console.print(
            f"steps compiled with torch.compile ({backends}) in warm-up steps: the peaks and step times "
            "above are of the compiled step, its compiling excluded ('compile s')"
        )
    for m in result.max_batch:
        out_console.print(f"max batch {m.method}: {m.max_batch_size} ({len(m.probes)} probes)")
    if any(a.modules for a in result.attribution):
        from .tables import format_table

        for a in result.attribution:
            if a.modules:
                out_console.print(format_table(a.model_dump(), top=15), markup=False, highlight=False)
    for e in result.errors:
        console.print(f"[red]{e.splitlines()[0]}[/red]")


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
    out.write_text(result.model_dump_json(indent=2))
    print_table(result)
    console.print(f"wrote {out}")
    raise typer.Exit(0 if result.status == JobStatus.succeeded else 1)


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
