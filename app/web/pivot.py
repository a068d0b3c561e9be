"""The latest result per (model, mode, dtype, method, batch), with ratios to a baseline method."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from app.models import ResultRow
from app.web.charts import memory_text


@dataclass
class Cell:
    row: ResultRow
    ratio: float | None  # baseline peak / this peak: how many times less memory than the baseline

    @property
    def peak_text(self) -> str:
        """The peak in its own unit (96.7 MiB, 2.13 GiB): one fixed GiB column read 0.09 for every small model."""
        return "OOM" if self.row.oom else memory_text(self.row.peak_bytes)


def latest_rows(session, model=None, methods=None, dtype=None, mode=None, jobs=None) -> list[ResultRow]:
    """Aggregated in SQL (max id per key), so a page never pulls every stored row."""
    where = [ResultRow.job_id.in_(jobs)] if jobs else []
    for column, value in ((ResultRow.model, model), (ResultRow.dtype, dtype), (ResultRow.mode, mode)):
        if value:
            where.append(column == value)
    if methods:
        where.append(ResultRow.method.in_(methods))
    keys = (ResultRow.model, ResultRow.mode, ResultRow.dtype, ResultRow.method, ResultRow.batch_size)
    latest = select(func.max(ResultRow.id)).where(*where).group_by(*keys)
    return list(session.execute(select(ResultRow).where(ResultRow.id.in_(latest))).scalars())


def pivot(rows: list[ResultRow], baseline: str) -> dict[tuple, dict[int, Cell]]:
    """(model, mode, dtype, method) -> {batch: Cell}."""
    by_key: dict[tuple, dict[int, ResultRow]] = {}
    for r in rows:
        by_key.setdefault((r.model, r.mode, r.dtype, r.method), {})[r.batch_size] = r
    out: dict[tuple, dict[int, Cell]] = {}
    for key, cells in sorted(by_key.items()):
        base = by_key.get((*key[:3], baseline), {})
        out[key] = {}
        for b, r in sorted(cells.items()):
            ref = base.get(b)
            ok = ref is not None and ref.peak_bytes and r.peak_bytes and not r.oom
            out[key][b] = Cell(r, ref.peak_bytes / r.peak_bytes if ok else None)
    return out


CSV_COLUMNS = (
    "model",
    "mode",
    "dtype",
    "method",
    "batch_size",
    "peak_bytes",
    "oom",
    "ratio_to_baseline",
    "baseline",
    "job_id",
)


def csv_rows(table: dict[tuple, dict[int, Cell]], baseline: str) -> list[dict]:
    return [
        {
            "model": k[0],
            "mode": k[1],
            "dtype": k[2],
            "method": k[3],
            "batch_size": b,
            "peak_bytes": c.row.peak_bytes,
            "oom": c.row.oom,
            "ratio_to_baseline": c.ratio,
            "baseline": baseline,
            "job_id": c.row.job_id,
        }
        for k, cells in table.items()
        for b, c in cells.items()
    ]
