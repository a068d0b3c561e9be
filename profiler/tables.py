"""The CLI's tables, one per measurement that has rows, with the columns the registry names."""

from __future__ import annotations

from rich.table import Table

from contract.measurements import MEASUREMENTS, Column
from contract.results import JobResult

# Shown beside the trial columns when a row's step was compiled (spec compile: true): which rows,
# what compiling took, and into how many graphs (more than one: graph breaks or recompiles).
COMPILE_COLUMNS = (
    Column("compiled", "compiled", "flag"),
    Column("compile s", "compile_s", "digits"),
    Column("graphs", "compile_graphs", "int"),
    Column("breaks", "compile_graph_breaks", "int"),
)
# Shown when an estimate replayed rows between its traced batch sizes (TrialRow.predicted).
REPLAYED = Column("replayed", "predicted", "flag")


def cell(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "flag":
        return "yes" if value else ""
    if unit == "mib":
        return f"{value / 2**20:,.0f}"
    if unit == "kib":
        return f"{value / 2**10:,.1f}"
    if unit == "rate" or unit == "seconds":
        return f"{value:,.0f}"
    if unit == "percent":
        return f"{100 * value:.2f}"
    if unit == "digits":
        return f"{value:.4g}"
    return str(value)[:60]


def tables(result: JobResult) -> list[Table]:
    """A table per result field that holds rows; a field shared by several measurements (the
    trial rows of peak_memory and throughput) is one table."""
    out, seen = [], set()
    for m in MEASUREMENTS.values():
        rows = getattr(result, m.field)
        if m.field in seen or not rows:
            continue
        seen.add(m.field)
        title = f"job {result.id} · {result.status}" + ("" if m.field == "results" else f" · {m.field}")
        table = Table(title=title)
        columns: tuple[Column, ...] = m.columns
        if m.field == "results" and any(getattr(r, "compiled", False) for r in rows):
            columns = (*columns[:-2], *COMPILE_COLUMNS, *columns[-2:])  # before oom and error
        if m.field == "results" and any(getattr(r, "predicted", False) for r in rows):
            columns = (*columns[:3], REPLAYED, *columns[3:])  # after mode
        for c in columns:
            table.add_column(c.header)
        for r in rows:
            table.add_row(*(cell(getattr(r, c.field, None), c.unit) for c in columns))
        out.append(table)
    return out


MIB = 2**20


def format_table(attribution: dict, top: int = 20, ops_per_row: int = 3) -> str:
    """A plain-text table for the CLI: module, bytes (in MiB, or KiB for a tiny model), its largest ops."""
    rows = attribution["modules"][:top]
    name, size = ("MiB", MIB) if attribution["total_bytes"] >= 10 * MIB else ("KiB", 2**10)
    width = max([len(_label(r["module"])) for r in rows] + [6])
    head = (
        f"saved for backward: {attribution['method'] or '?'} batch {attribution['batch_size']} ({attribution['mode']})"
    )
    lines = [head, f"{'module':<{width}}  {name:>9}  top ops"]
    for r in rows:
        ops = sorted(r["ops"].items(), key=lambda kv: (-kv[1], kv[0]))[:ops_per_row]
        text = ", ".join(f"{op} {b / size:.1f}" for op, b in ops)
        lines.append(f"{_label(r['module']):<{width}}  {r['bytes'] / size:>9.1f}  {text}")
    shown = sum(r["bytes"] for r in rows)
    if len(attribution["modules"]) > len(rows):
        lines.append(f"{'(rest)':<{width}}  {(attribution['total_bytes'] - shown) / size:>9.1f}")
    lines.append(f"{'total':<{width}}  {attribution['total_bytes'] / size:>9.1f}")
    return "\n".join(lines)


def _label(module: str) -> str:
    return module if module else "<root>"
