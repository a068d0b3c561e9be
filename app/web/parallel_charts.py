"""The job page's figures for DDP/FSDP jobs: peak memory per rank, and the words that say how a job
ran (`parallel_label`), which the other figures put in their titles. Every number a parallel row
reports is one rank's and its batch size is the per-rank micro-batch, so a title without the
strategy would read as one device's."""

from __future__ import annotations

from contract.rows import TrialRow

from .charts import figure_layout, memory_axis, memory_text, memory_unit, plotly_safe, titled_axis, trace_styles


def parallel_label(spec: dict) -> str | None:
    """'fsdp×8' for a job run over 8 FSDP ranks; None for one device."""
    parallel = spec.get("parallel") or {}
    strategy = parallel.get("strategy") or "none"
    return None if strategy == "none" else f"{strategy}×{parallel.get('world_size') or 1}"


def _batch(rows: list[TrialRow]) -> int | None:
    """The largest batch every method has per-rank numbers at (else the largest any has): one
    batch, so the bars compare methods, not batch sizes."""
    sizes: dict[str, set[int]] = {}
    for r in rows:
        sizes.setdefault(r.method, set()).add(r.batch_size)
    common = set.intersection(*sizes.values()) if sizes else set()
    return max(common or {r.batch_size for r in rows}, default=None)


def _ranks(row: TrialRow) -> list[tuple[int, int | None, float | None]]:
    """(rank, peak, step time) of a row: every rank where measured, rank 0 alone where estimated."""
    if row.ranks:
        return [(p.rank, p.peak_bytes, p.step_time_s) for p in sorted(row.ranks, key=lambda p: p.rank)]
    return [(row.rank or 0, row.peak_bytes, row.step_time_s)]


@plotly_safe
def per_rank(rows: list[TrialRow], spec: dict) -> dict | None:
    """Peak memory of each rank, a bar per method at each rank, at one batch size; None for a job on
    one device. An estimate traces rank 0 only (it holds the largest shard), so it has one bar per
    method; a measured run has one per rank, and the table gives the spread between them."""
    label = parallel_label(spec)
    fine = [r for r in rows if r.strategy and not r.oom and not r.error and r.peak_bytes]
    if label is None or not fine:
        return None
    batch = _batch(fine)
    picked = [r for r in fine if r.batch_size == batch]
    unit, size = memory_unit(max(p or 0 for r in picked for _, p, _ in _ranks(r)))
    styles = trace_styles(r.method for r in picked)
    data = []
    for r in picked:
        ranks = _ranks(r)
        data.append(
            {
                "type": "bar",
                "name": r.method,
                "x": [f"rank {rank}" for rank, _, _ in ranks],
                "y": [(p or 0) / size for _, p, _ in ranks],
                "text": [f"{t * 1000:.0f} ms/step" if t else "" for _, _, t in ranks],
                "textposition": "none",  # the step time is for the hover; the bars stay plain
                "hovertemplate": f"%{{x}}: %{{y:.4~r}} {unit}<br>%{{text}}",
                "marker": {"color": styles[r.method]["marker"]["color"]},
            }
        )
    world = max(len(_ranks(r)) for r in picked)
    table = {
        "columns": ["method", "batch per rank", *(f"rank {i}" for i in range(world)), "spread (max - min)"],
        "rows": [
            [
                r.method,
                str(r.batch_size),
                *(memory_text(p) for _, p, _ in _ranks(r)),
                *([""] * (world - len(_ranks(r)))),
                memory_text(r.peak_spread_bytes) if r.peak_spread_bytes is not None else "N/A (rank 0 only)",
            ]
            for r in picked
        ],
    }
    how = "measured" if any(r.ranks for r in picked) else "estimated: rank 0"
    title = f"Peak memory per rank · {label}, batch {batch} ({how})"
    layout = figure_layout(title, titled_axis("rank"), memory_axis("peak memory", unit), barmode="group")
    return {"data": data, "layout": layout, "table": table}
