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

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Profile WTA-CRS and other fine-tuning methods.")
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
            console.print(f"  {where}: {e['msg']}")
        raise typer.Exit(2) from None


def _mib(v) -> str:
    return "-" if v is None else f"{v / MIB:,.0f}"


def print_table(result: dict) -> None:
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
    for m in result["max_batch"]:
        out_console.print(f"max batch {m['method']}: {m['max_batch_size']} ({len(m['probes'])} probes)")
    for e in result["errors"]:
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
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    console.print(f"wrote {out}")
    raise typer.Exit(0 if result["status"] == "succeeded" else 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
