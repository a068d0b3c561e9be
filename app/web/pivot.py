"""The compare page's table: `services.results.compare` (the latest row per key, ratio to a
baseline) laid out as (model, mode, dtype, series) x batch size, and as CSV. A series is a method
as it ran: "full", or "full · fsdp×8" (services.results.series)."""

from __future__ import annotations

from dataclasses import dataclass

from app.models import ResultRow
from app.services.results import Compared, series
from app.web.charts import memory_ratio_words, memory_text, share_words


@dataclass
class Cell:
    row: ResultRow
    ratio: float | None  # baseline peak / this peak: how many times less memory than the baseline
    speed: float | None = None  # this tokens/s / the baseline's

    def ratio_text(self, baseline: str) -> str:
        """The ratios in words, one way round: '2.5x less memory than full · 0.8x full's tokens/s'."""
        if self.row.method == baseline:
            return ""
        return " · ".join(
            filter(None, [memory_ratio_words(self.ratio, baseline), share_words(self.speed, baseline, "tokens/s")])
        )

    @property
    def peak_text(self) -> str:
        """The peak in its own unit (96.7 MiB, 2.13 GiB): one fixed GiB column read 0.09 for every small model."""
        return "OOM" if self.row.oom else memory_text(self.row.peak_bytes)


def pivot(compared: list[Compared]) -> dict[tuple, dict[int, Cell]]:
    """(model, mode, dtype, series) -> {batch: Cell}, in `compare`'s order."""
    out: dict[tuple, dict[int, Cell]] = {}
    for c in compared:
        r = c.row
        out.setdefault((r.model, r.mode, r.dtype, series(r)), {})[r.batch_size] = Cell(r, c.memory_ratio, c.speed_ratio)
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
    "strategy",  # last, so a CSV read by position before they existed still reads the same
    "world_size",
    "compiled",
)


def csv_rows(table: dict[tuple, dict[int, Cell]], baseline: str) -> list[dict]:
    return [
        {
            "model": k[0],
            "mode": k[1],
            "dtype": k[2],
            "method": c.row.method,
            "strategy": c.row.strategy,
            "world_size": c.row.world_size,
            "compiled": c.row.compiled,
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
