"""The largest batch that fits, per method: the bar chart the job page, the compare page and the
"what fits" answer share, its title, and the grouping of stored largest-batch rows by the
conditions a batch size means nothing without (mode, memory target, length, dtype, parallel)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import ValidationError

from contract.rows import MaxBatchRow

from .charts import figure_layout, memory_text, plotly_safe, share_words, titled_axis, trace_styles

GIB = 2**30
MODE_WORDS = {"estimate": "estimated", "cpu": "measured on cpu", "cuda": "measured on cuda"}


def target_text(n: float) -> str:
    """A memory target as it was asked for: '80 GiB', '79.6 GiB' (never '80.0 GiB')."""
    number, _, unit = memory_text(n).partition(" ")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return f"{number} {unit}".strip()


def max_batch_title(
    parallel: str | None = None,
    limit_bytes: float | None = None,
    seq_len: int | None = None,
    dtype: str | None = None,
) -> str:
    """'Largest batch that fits in 80 GiB · length 128 · fp32': what the bars answer, and the
    conditions a batch size means nothing without; the parts not known left out."""
    what = "Largest micro-batch per rank that fits" if parallel else "Largest batch that fits"
    if limit_bytes:
        what += f" in {target_text(limit_bytes)}"
    parts = [what, parallel, f"length {seq_len}" if seq_len else None, dtype]
    return " · ".join(p for p in parts if p)


def batch_label(row: MaxBatchRow) -> str:
    """A largest batch as a number a reader can trust: '≥ 4096' where the search stopped at its upper
    bound (the batch that fits is at least that, not that)."""
    return f"≥ {row.max_batch_size}" if row.capped_at_upper else str(row.max_batch_size)


def batch_words(row: MaxBatchRow, full: MaxBatchRow | None, what: str = "batch") -> str:
    """The ratio of `row`'s largest batch to `full`'s in words; '' for full, without full, or where
    both stopped at the search's upper bound (two lower bounds have no ratio). A capped row's ratio
    is a lower bound ('at least'), a capped full's an upper one ('at most')."""
    if full is None or not full.max_batch_size or row.method == "full":
        return ""
    if row.capped_at_upper and full.capped_at_upper:
        return ""
    words = share_words(row.max_batch_size / full.max_batch_size, "full", what)
    if words.startswith("same "):
        words = "the " + words
    if row.capped_at_upper:
        return f"at least {words}"
    return f"at most {words}" if full.capped_at_upper else words


def full_batch(rows: list[MaxBatchRow]) -> MaxBatchRow | None:
    """The `full` method's row among `rows`, the baseline of the ratios."""
    return next((m for m in rows if m.method == "full"), None)


@plotly_safe
def max_batch_bars(
    max_batch: list[MaxBatchRow],
    parallel: str | None = None,
    limit_bytes: float | None = None,
    seq_len: int | None = None,
    dtype: str | None = None,
    mode: str | None = None,
) -> dict:
    """`parallel` ('fsdp×8'): the batches are per-rank micro-batches of that many ranks, and say so.
    Each bar is labelled with its batch size first, then its ratio to full's in words; the title
    names the memory target (the rows' own limit, else `limit_bytes`), the length and the dtype,
    and with `mode` how the sizes were found ('estimated')."""
    base = full_batch(max_batch)
    what = "micro-batch" if parallel else "batch"
    # the ratio in words under the number, on a line of its own: beside it, plotly shrank the label
    # to the bar's width
    text = [batch_words(m, base, what) for m in max_batch]
    styles = trace_styles(m.method for m in max_batch)
    bar = {
        "type": "bar",
        "x": [m.method for m in max_batch],
        "y": [m.max_batch_size for m in max_batch],
        "text": text,
        "customdata": [batch_label(m) for m in max_batch],  # '≥ 4096' where the search stopped
        "texttemplate": "%{customdata}<br>%{text}",
        "hovertemplate": "%{x}: %{customdata}<br>%{text}",
        "textposition": "outside",
        "cliponaxis": False,
        "marker": {"color": [styles[m.method]["marker"]["color"] for m in max_batch]},
        "name": "max batch",
    }
    largest = max((m.max_batch_size for m in max_batch), default=0)
    # whole batch sizes only: below 10 plotly's automatic step would be 0.5
    axis = "largest micro-batch per rank" if parallel else "largest batch size"
    count = titled_axis(axis, rangemode="tozero", tickformat="d", **({"dtick": 1} if largest <= 10 else {}))
    limit = next((m.limit_bytes for m in max_batch if m.limit_bytes), None) or limit_bytes
    length = next((m.seq_len for m in max_batch if m.seq_len), None) or seq_len
    title = max_batch_title(parallel, limit, length, dtype)
    if mode in MODE_WORDS:
        title += f" ({MODE_WORDS[mode]})"
    return {"data": [bar], "layout": figure_layout(title, titled_axis("method"), count, showlegend=False)}


# --- across jobs (the compare page) ---


@dataclass
class BatchGroup:
    """The latest largest batch per method among jobs run under one set of conditions."""

    mode: str
    dtype: str
    seq_len: int | None
    limit_bytes: float | None
    strategy: str  # none, ddp or fsdp
    world_size: int
    compiled: bool
    rows: dict[str, MaxBatchRow] = field(default_factory=dict)  # method -> row
    jobs: dict[str, str] = field(default_factory=dict)  # method -> the job it came from

    @property
    def parallel(self) -> str | None:
        """'fsdp×8', or None for one device."""
        return None if self.strategy == "none" else f"{self.strategy}×{self.world_size}"

    @property
    def title(self) -> str:
        return max_batch_title(self.parallel, self.limit_bytes, self.seq_len, self.dtype)

    @property
    def conditions(self) -> str:
        """What the table's first column says: 'estimated · 80 GiB · length 128 · fp32'."""
        parts = [
            MODE_WORDS.get(self.mode, self.mode),
            target_text(self.limit_bytes) if self.limit_bytes else None,
            self.parallel,
            f"length {self.seq_len}" if self.seq_len else None,
            self.dtype,
            "compiled" if self.compiled else None,
        ]
        return " · ".join(p for p in parts if p)

    def figure(self) -> dict:
        rows = list(self.rows.values())
        return max_batch_bars(rows, self.parallel, self.limit_bytes, self.seq_len, self.dtype, self.mode)

    def table(self) -> list[dict]:
        base = full_batch(list(self.rows.values()))
        return [
            {"method": m, "batch": batch_label(r), "words": batch_words(r, base), "job": self.jobs[m]}
            for m, r in self.rows.items()
        ]


def _number(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return value if ok else None


def _rows(stored) -> list[MaxBatchRow]:
    """A job's stored `max_batch` list as rows; an entry the contract no longer reads is left out."""
    rows = []
    for item in stored if isinstance(stored, list) else []:
        try:
            rows.append(MaxBatchRow.model_validate(item))
        except ValidationError:
            continue
    return rows


def group_largest_batches(jobs: list[dict], methods: tuple[str, ...] = ()) -> list[BatchGroup]:
    """`jobs` newest first (services.results.max_batches): their rows grouped by conditions, the
    newest job's row per method in each group, methods in the order the newest job ran them; the
    group of the newest job first. `methods`: only those (none: all)."""
    groups: dict[tuple, BatchGroup] = {}
    for job in jobs:
        parallel = job.get("parallel") if isinstance(job.get("parallel"), dict) else {}
        strategy = parallel.get("strategy") if isinstance(parallel.get("strategy"), str) else "none"
        world_size = parallel.get("world_size") if isinstance(parallel.get("world_size"), int) else 1
        target = _number(job.get("target_memory_gb"))
        for row in _rows(job.get("max_batch")):
            if methods and row.method not in methods:
                continue
            limit = _number(row.limit_bytes) or (target * GIB if target else None)
            seq_len = row.seq_len or (job["seq_len"] if isinstance(job.get("seq_len"), int) else None)
            compiled = job.get("compile") is True
            conditions = (row.mode, job["dtype"], seq_len, limit, strategy, world_size, compiled)
            key = (*conditions[:3], round(limit / 2**20) if limit else None, *conditions[4:])
            group = groups.setdefault(key, BatchGroup(*conditions))
            if row.method not in group.rows:
                group.rows[row.method] = row
                group.jobs[row.method] = job["id"]
    return list(groups.values())
