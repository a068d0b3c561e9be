"""The job page's figures, one function per chart, and `JOB_CHARTS`, the names the measurement
registry (`contract/measurements.py`) uses for them. They read the contract's typed rows."""

from __future__ import annotations

from collections.abc import Callable

from contract.rows import CATEGORIES, AttributionRow, FidelityRow, MaxBatchRow, TrialRow

from .charts import (
    BREAKDOWN_COLORS,
    BREAKDOWN_ORDER,
    NO_GRADIENT,
    NOT_APPLICABLE,
    RED,
    _axis,
    _batch_axis,
    _digits,
    _layout,
    _line,
    _memory_axis,
    _styles,
    memory_text,
    memory_unit,
    plotly_safe,
    share_words,
)
from .convergence_charts import accuracy_vs_memory, loss_curves
from .parallel_charts import parallel_label, per_rank


def _by_method(rows: list[TrialRow]) -> dict[str, list[TrialRow]]:
    out: dict[str, list[TrialRow]] = {}
    for r in sorted(rows, key=lambda r: r.batch_size):
        out.setdefault(r.method, []).append(r)
    return out


@plotly_safe
def memory_vs_batch(rows: list[TrialRow], device_bytes: float | None, mode: str, parallel: str | None = None) -> dict:
    styles = _styles(r.method for r in rows)
    unit, size = memory_unit(max([r.peak_bytes or 0 for r in rows] + [device_bytes or 0]))
    data = []
    for method, rs in _by_method(rows).items():
        ok = [r for r in rs if not r.oom and r.peak_bytes]
        xs, ys = [r.batch_size for r in ok], [r.peak_bytes / size for r in ok]
        data.append(_line(method, xs, ys, legendgroup=method, **styles[method]))
        oom = [r for r in rs if r.oom]
        if oom:
            y = [(r.peak_bytes or device_bytes or 0) / size for r in oom]
            marker = {"symbol": "x", "size": 12, "color": RED}
            xs = [r.batch_size for r in oom]
            data.append(_line(f"{method} (OOM)", xs, y, mode="markers", marker=marker, legendgroup=method))
    shapes = []
    if device_bytes:
        y = device_bytes / size
        shapes.append(
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": y,
                "y1": y,
                "line": {"dash": "dash", "color": "#888"},
                "label": {"text": "device memory", "textposition": "start", "font": {"size": 11, "color": "#666"}},
            }
        )
    label = {"estimate": " (estimated)", "cpu": " (measured)", "cuda": " (measured)"}.get(mode, "")
    return {
        "data": data,
        "layout": _layout(
            f"Peak memory per rank vs micro-batch · {parallel}{label}"
            if parallel
            else f"Peak memory vs batch size{label}",
            _batch_axis(r.batch_size for r in rows),
            _memory_axis("peak memory", unit),
            shapes=shapes,
            hovermode="x unified",
        ),
    }


def _target_text(n: float) -> str:
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
        what += f" in {_target_text(limit_bytes)}"
    parts = [what, parallel, f"length {seq_len}" if seq_len else None, dtype]
    return " · ".join(p for p in parts if p)


@plotly_safe
def max_batch_bars(
    max_batch: list[MaxBatchRow],
    parallel: str | None = None,
    limit_bytes: float | None = None,
    seq_len: int | None = None,
    dtype: str | None = None,
) -> dict:
    """`parallel` ('fsdp×8'): the batches are per-rank micro-batches of that many ranks, and say so.
    Each bar is labelled with its batch size first, then its ratio to full's in words; the title
    names the memory target (the rows' own limit, else `limit_bytes`), the length and the dtype."""
    base = next((m.max_batch_size for m in max_batch if m.method == "full"), None)
    what = "micro-batch" if parallel else "batch"
    # the ratio in words under the number, on a line of its own: beside it, plotly shrank the label
    # to the bar's width
    text = [
        share_words(m.max_batch_size / base, "full", what) if base and m.method != "full" else "" for m in max_batch
    ]
    styles = _styles(m.method for m in max_batch)
    bar = {
        "type": "bar",
        "x": [m.method for m in max_batch],
        "y": [m.max_batch_size for m in max_batch],
        "text": text,
        "texttemplate": "%{y}<br>%{text}",
        "hovertemplate": "%{x}: %{y}<br>%{text}",
        "textposition": "outside",
        "cliponaxis": False,
        "marker": {"color": [styles[m.method]["marker"]["color"] for m in max_batch]},
        "name": "max batch",
    }
    largest = max((m.max_batch_size for m in max_batch), default=0)
    # whole batch sizes only: below 10 plotly's automatic step would be 0.5
    axis = "largest micro-batch per rank" if parallel else "largest batch size"
    count = _axis(axis, rangemode="tozero", tickformat="d", **({"dtick": 1} if largest <= 10 else {}))
    limit = next((m.limit_bytes for m in max_batch if m.limit_bytes), None) or limit_bytes
    length = next((m.seq_len for m in max_batch if m.seq_len), None) or seq_len
    title = max_batch_title(parallel, limit, length, dtype)
    return {"data": [bar], "layout": _layout(title, _axis("method"), count, showlegend=False)}


@plotly_safe
def throughput(rows: list[TrialRow]) -> dict:
    styles = _styles(r.method for r in rows)
    data = []
    for method, rs in _by_method(rows).items():
        ok = [r for r in rs if r.tokens_per_s]
        if ok:
            data.append(_line(method, [r.batch_size for r in ok], [r.tokens_per_s for r in ok], **styles[method]))
    speed = _axis("throughput (tokens/s)", rangemode="tozero", tickformat=".3~s", hoverformat=",.0f")
    return {
        "data": data,
        "layout": _layout(
            "Throughput vs batch size", _batch_axis(r.batch_size for r in rows), speed, hovermode="x unified"
        ),
    }


@plotly_safe
def breakdown(rows: list[TrialRow]) -> dict:
    """Horizontal stacked bars per method at the largest batch every method ran without OOM, the
    activations labelled at each bar's end, and every category's value in the companion table."""
    fine = [r for r in rows if r.breakdown and not r.oom]
    common = None
    for rs in _by_method(fine).values():
        sizes = {r.batch_size for r in rs}
        common = sizes if common is None else common & sizes
    batch = max(common) if common else None
    picked = {r.method: r.breakdown for r in fine if r.batch_size == batch}
    if not picked:  # rows without a breakdown: no empty axes on the page
        return None
    methods = list(picked)
    totals = {m: sum(picked[m].get(c, 0) for c in CATEGORIES) for m in methods}
    unit, size = memory_unit(max(totals.values(), default=0))
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "name": c.replace("_", " "),
            "y": methods,
            "x": [picked[m].get(c, 0) / size for m in methods],
            "marker": {"color": BREAKDOWN_COLORS[c], "line": {"color": "#fff", "width": 0.5}},
            "hovertemplate": f"%{{x:.4~r}} {unit}",
        }
        for c in BREAKDOWN_ORDER
    ]
    # the activations' value at each bar's end: readable even where the segment is a pixel wide
    notes = [
        {
            "x": totals[m] / size,
            "y": m,
            "xanchor": "left",
            "showarrow": False,
            "text": f" activations {memory_text(picked[m].get('activations', 0))}"
            f" ({picked[m].get('activations', 0) / (totals[m] or 1):.0%})",
            "font": {"size": 11, "color": BREAKDOWN_COLORS["activations"]},
        }
        for m in methods
    ]
    widest = max(totals.values(), default=0) / size
    xaxis = _memory_axis("memory at the peak", unit, range=[0, 1.6 * widest or 1])
    yaxis = _axis("", autorange="reversed")  # the first method on top, as in the legend of the other charts
    table = {
        "columns": ["method", *(c.replace("_", " ") for c in BREAKDOWN_ORDER), "total"],
        "rows": [
            [m, *(memory_text(picked[m].get(c, 0)) for c in BREAKDOWN_ORDER), memory_text(totals[m])] for m in methods
        ],
    }
    title = f"Memory at the peak, batch {batch}" if batch else "Memory at the peak"
    layout = _layout(
        title,
        xaxis,
        yaxis,
        barmode="stack",
        annotations=notes,
        # under the axis title, at the foot of the figure: beside the plot it took the labels' room
        legend={
            "orientation": "h",
            "x": 0,
            "xref": "paper",
            "y": 0,
            "yref": "container",
            "yanchor": "bottom",
            "traceorder": "normal",
        },
        margin={"t": 76, "l": 90, "r": 20, "b": 110},
    )
    return {"data": data, "layout": layout, "table": table}


def fidelity_na(row: FidelityRow) -> bool:
    """True where the exact weight gradient is zero (LoRA's frozen base weight): the old profiler
    form has exact_norm 1e-30 and relative_error 0.0, the new one nulls."""
    norm = row.exact_norm
    return row.relative_error is None or norm is None or norm < NO_GRADIENT


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _fidelity_summary(method: str, rows: list[FidelityRow]) -> list[str]:
    defined = [r for r in rows if not fidelity_na(r)]
    na = len(rows) - len(defined)
    layers = f"{len(rows)} ({na} N/A)" if na else str(len(rows))
    if not defined:
        return [method, str(rows[0].batch_size), layers, *[NOT_APPLICABLE] * 4]
    stats = [
        _mean([r.relative_error for r in defined]),
        max(r.relative_error for r in defined),
        _mean([r.relative_bias or 0 for r in defined]),
        _mean([r.relative_variance or 0 for r in defined]),
    ]
    return [method, str(rows[0].batch_size), layers, *map(_digits, stats)]


@plotly_safe
def fidelity(rows: list[FidelityRow]) -> dict:
    """Relative error of the sampled weight gradient per layer; layers where it is undefined are gaps
    in the line, named in the legend and the table, never points at 0."""
    data, table = [], []
    for method, style in _styles(r.method for r in rows).items():
        rs = [r for r in rows if r.method == method]
        layers = [r.layer.split(".", 2)[-1] if r.layer.count(".") > 4 else r.layer for r in rs]
        errors = [None if fidelity_na(r) else r.relative_error for r in rs]
        na = errors.count(None)
        name = f"{method}: {NOT_APPLICABLE}" if na == len(rs) else f"{method} ({na} layers N/A)" if na else method
        data.append(_line(name, layers, errors, **style))
        table.append(_fidelity_summary(method, rs))
    columns = [
        "method",
        "batch",
        "layers",
        "mean relative error",
        "worst layer",
        "mean relative bias",
        "mean relative variance",
    ]
    return {
        "data": data,
        "layout": _layout(
            "Weight-gradient relative error per layer (sampled vs exact)",
            _axis("layer", tickangle=-45),
            _axis("relative error", rangemode="tozero", hoverformat=".3~r"),
            hovermode="x unified",
        ),
        "table": {"columns": columns, "rows": table},
    }


@plotly_safe
def frontier(rows: list[TrialRow]) -> dict | None:
    """Peak memory against tokens/s, every (method, batch) measured: the points no other beats on
    both axes are joined, so a user sees which method and batch to pick."""
    ok = [r for r in rows if r.tokens_per_s and r.peak_bytes and not r.oom and not r.error]
    if not ok:
        return None
    unit, size = memory_unit(max(r.peak_bytes for r in ok))
    styles = _styles(r.method for r in ok)
    data = []
    for method, rs in _by_method(ok).items():
        data.append(
            _line(
                method,
                [r.peak_bytes / size for r in rs],
                [r.tokens_per_s for r in rs],
                mode="markers",
                text=[f"batch {r.batch_size}" for r in rs],
                hovertemplate=f"%{{text}}: %{{x:.4~r}} {unit}, %{{y:,.0f}} tokens/s",
                marker=styles[method]["marker"] | {"size": 10},
            )
        )
    best, fastest = [], -1.0
    for r in sorted(ok, key=lambda r: (r.peak_bytes, -r.tokens_per_s)):
        if r.tokens_per_s > fastest:  # faster than everything that needs less memory
            best.append(r)
            fastest = r.tokens_per_s
    data.append(
        _line(
            "frontier",
            [r.peak_bytes / size for r in best],
            [r.tokens_per_s for r in best],
            mode="lines",
            line={"dash": "dot", "color": "#888", "shape": "hv"},
            hoverinfo="skip",
        )
    )
    table = {
        "columns": ["on the frontier", "batch", "peak", "tokens/s"],
        "rows": [[r.method, str(r.batch_size), memory_text(r.peak_bytes), f"{r.tokens_per_s:,.0f}"] for r in best],
    }
    xaxis = _memory_axis("peak memory", unit)
    yaxis = _axis("throughput (tokens/s)", rangemode="tozero", tickformat=".3~s")
    return {"data": data, "layout": _layout("Memory vs throughput", xaxis, yaxis), "table": table}


def _group_label(path: str) -> str:
    return path or "(model)"


@plotly_safe
def attribution(rows: list[AttributionRow], top: int = 15) -> dict | None:
    """Saved activations by module (layer indices folded, so 'encoder.block.*.layer.0.SelfAttention'
    sums every encoder layer's), the largest first, a bar per method."""
    fine = [r for r in rows if r.groups]
    if not fine:
        return None
    largest: dict[str, int] = {}
    for r in fine:
        for g in r.groups:
            largest[g.module] = max(largest.get(g.module, 0), g.bytes)
    names = sorted(largest, key=lambda n: (-largest[n], n))[:top]
    unit, size = memory_unit(max(largest.values()))
    styles = _styles(r.method for r in fine)
    data = []
    for r in fine:
        by = {g.module: g for g in r.groups}
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": r.method,
                "y": [_group_label(n) for n in names],
                "x": [by[n].bytes / size if n in by else 0 for n in names],
                "text": [", ".join(list(by[n].ops)[:3]) if n in by else "" for n in names],
                "hovertemplate": f"%{{x:.4~r}} {unit}<br>%{{text}}",
                "marker": {"color": styles[r.method]["marker"]["color"]},
            }
        )
    table = {
        "columns": ["method", "batch", "saved for backward", "largest", "its share", "its top ops"],
        "rows": [
            [
                r.method,
                str(r.batch_size),
                memory_text(r.total_bytes),
                _group_label(r.groups[0].module),
                f"{r.groups[0].bytes / (r.total_bytes or 1):.0%}",
                ", ".join(f"{op} {memory_text(b)}" for op, b in list(r.groups[0].ops.items())[:3]),
            ]
            for r in fine
        ],
    }
    layout = _layout(
        f"Saved activations by module, first step, batch {fine[0].batch_size}",
        _memory_axis("bytes saved for backward", unit),
        _axis("", autorange="reversed", automargin=True),
        barmode="group",
        height=max(420, 60 + 22 * len(names) * max(1, len(fine)) // 2),
        margin={"t": 76, "l": 20, "r": 20, "b": 60},
    )
    return {"data": data, "layout": layout, "table": table}


def _throughput(job, device_bytes):
    return throughput(job.results) if any(r.tokens_per_s for r in job.results) else None


# name -> figure of a job (its results and environment) and the device's memory in bytes, or None;
# in the order the job page lays them out.
JOB_CHARTS: dict[str, Callable] = {
    "memory": lambda job, device_bytes: memory_vs_batch(
        job.results, device_bytes, job.device, parallel_label(job.spec)
    ),
    "ranks": lambda job, device_bytes: per_rank(job.results, job.spec),
    "max_batch": lambda job, device_bytes: max_batch_bars(
        job.max_batch, parallel_label(job.spec), device_bytes, job.spec.get("seq_len"), job.spec.get("dtype")
    ),
    "throughput": _throughput,
    "breakdown": lambda job, device_bytes: breakdown(job.results),
    "frontier": lambda job, device_bytes: frontier(job.results),
    "attribution": lambda job, device_bytes: attribution(job.attribution),
    "fidelity": lambda job, device_bytes: fidelity(job.fidelity),
    "loss": lambda job, device_bytes: loss_curves(job.convergence),
    "accuracy": lambda job, device_bytes: accuracy_vs_memory(job.convergence),
}
WIDE_CHARTS = frozenset({"fidelity", "attribution"})  # a panel across the page
