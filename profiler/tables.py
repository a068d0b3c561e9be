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
        for c in columns:
            table.add_column(c.header)
        for r in rows:
            table.add_row(*(cell(getattr(r, c.field, None), c.unit) for c in columns))
        out.append(table)
    return out
