"""The job page's figures, one function per chart, and `JOB_CHARTS`, the names the measurement
registry (`contract/measurements.py`) uses for them. They read the contract's typed rows."""

from __future__ import annotations

from collections.abc import Callable

from contract.rows import CATEGORIES, AttributionRow, FidelityRow, TrialRow

from .batch_charts import max_batch_bars, target_text
from .batch_charts import max_batch_title as max_batch_title  # re-exported: the job page's title
from .charts import (
    BREAKDOWN_COLORS,
    BREAKDOWN_ORDER,
    NO_GRADIENT,
    NOT_APPLICABLE,
    RED,
    batch_axis,
    figure_layout,
    line_trace,
    memory_axis,
    memory_text,
    memory_unit,
    plotly_safe,
    sig_digits,
    titled_axis,
    trace_styles,
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
    styles = trace_styles(r.method for r in rows)
    unit, size = memory_unit(max([r.peak_bytes or 0 for r in rows] + [device_bytes or 0]))
    data = []
    for method, rs in _by_method(rows).items():
        ok = [r for r in rs if not r.oom and r.peak_bytes]
        xs, ys = [r.batch_size for r in ok], [r.peak_bytes / size for r in ok]
        data.append(line_trace(method, xs, ys, legendgroup=method, **styles[method]))
        oom = [r for r in rs if r.oom]
        if oom:
            y = [(r.peak_bytes or device_bytes or 0) / size for r in oom]
            marker = {"symbol": "x", "size": 12, "color": RED}
            xs = [r.batch_size for r in oom]
            data.append(line_trace(f"{method} (OOM)", xs, y, mode="markers", marker=marker, legendgroup=method))
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
                # under the line, at its left end: above it, at the top of the plot, the label ran
                # into the title; the left end is where the small batches' points are, far below
                "label": {
                    "text": f"{'target' if mode == 'estimate' else 'device memory'} {target_text(device_bytes)}",
                    "textposition": "start",
                    "yanchor": "top",
                    "padding": 4,
                    "font": {"size": 12, "color": "#555"},
                },
            }
        )
    label = {"estimate": " (estimated)", "cpu": " (measured)", "cuda": " (measured)"}.get(mode, "")
    replayed = sorted({r.batch_size for r in rows if r.predicted and r.mode == "estimate"})
    if mode == "estimate" and replayed:  # between two traced batches, from their event logs (TrialRow.predicted)
        which = f"batch {', '.join(map(str, replayed))}" if len(replayed) <= 2 else f"{len(replayed)} batch sizes"
        label = f" (estimated; {which} replayed)"  # short: the title shares its line with the modebar
    return {
        "data": data,
        "layout": figure_layout(
            f"Peak memory per rank vs micro-batch · {parallel}{label}"
            if parallel
            else f"Peak memory vs batch size{label}",
            batch_axis(r.batch_size for r in rows),
            memory_axis("peak memory", unit),
            shapes=shapes,
            hovermode="x unified",
        ),
    }


SPREAD_FLAG = 0.25  # (slowest - fastest) / median step time above this: the median is not to be trusted alone
FEW_STEPS = 5  # fewer timed steps than this: a median of too few to say how much steps vary


def _spread(r: TrialRow) -> float | None:
    if r.step_time_min_s is None or r.step_time_max_s is None or not r.step_time_s:
        return None
    return (r.step_time_max_s - r.step_time_min_s) / r.step_time_s


def _steadiness(r: TrialRow) -> str:
    spread = _spread(r)
    words = []
    if spread is not None and spread > SPREAD_FLAG:
        words.append(f"unsteady: steps vary {spread:.0%} of the median")
    if r.timed_steps is not None and r.timed_steps < FEW_STEPS:
        words.append(f"only {r.timed_steps} timed steps")
    return "; ".join(words) or "steady"


@plotly_safe
def throughput(rows: list[TrialRow]) -> dict:
    """The median step's tokens/s per method, an error bar from the slowest step to the fastest,
    and a table flagging rows whose steps vary widely or were too few to tell."""
    styles = trace_styles(r.method for r in rows)
    data = []
    for method, rs in _by_method(rows).items():
        ok = [r for r in rs if r.tokens_per_s]
        if not ok:
            continue
        # tokens/s is tokens / step time: the fastest step is the bar's top, the slowest its foot
        up = [r.tokens_per_s * (r.step_time_s / r.step_time_min_s - 1) if r.step_time_min_s else 0 for r in ok]
        down = [r.tokens_per_s * (1 - r.step_time_s / r.step_time_max_s) if r.step_time_max_s else 0 for r in ok]
        error = {"type": "data", "symmetric": False, "array": up, "arrayminus": down, "thickness": 1.5, "width": 6}
        trace = line_trace(method, [r.batch_size for r in ok], [r.tokens_per_s for r in ok], **styles[method])
        data.append({**trace, "error_y": {**error, "color": styles[method]["marker"]["color"]}})
    speed = titled_axis("throughput (tokens/s)", rangemode="tozero", tickformat=".3~s", hoverformat=",.0f")
    timed = [r for r in rows if r.tokens_per_s]
    table = {
        "columns": ["method", "batch", "tokens/s (median step)", "slowest – fastest step", "timed steps", "steadiness"],
        "rows": [
            [
                r.method,
                str(r.batch_size),
                f"{r.tokens_per_s:,.0f}",
                f"{r.step_time_max_s * 1000:,.1f} – {r.step_time_min_s * 1000:,.1f} ms"
                if r.step_time_min_s is not None and r.step_time_max_s is not None
                else "N/A (not recorded)",
                str(r.timed_steps) if r.timed_steps is not None else "N/A (not recorded)",
                _steadiness(r),
            ]
            for r in sorted(timed, key=lambda r: (r.method, r.batch_size))
        ],
    }
    return {
        "data": data,
        "layout": figure_layout(
            "Throughput vs batch size (median step; bars: slowest to fastest step)",
            batch_axis(r.batch_size for r in rows),
            speed,
            hovermode="x unified",
        ),
        "table": table,
    }


def _total_text(total: int, peak: int | None) -> str:
    """The breakdown's sum; where a row's categories do not sum to its peak (a row stored before
    'other' took the untracked bytes), both, so the table never silently disagrees with the chart."""
    if peak is None or total == peak:
        return memory_text(total)
    return f"{memory_text(total)} (peak {memory_text(peak)}: {memory_text(abs(peak - total))} not in a category)"


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
    at_batch = {r.method: r for r in fine if r.batch_size == batch}
    picked = {m: r.breakdown for m, r in at_batch.items()}
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
    xaxis = memory_axis("memory at the peak", unit, range=[0, 1.6 * widest or 1])
    yaxis = titled_axis("", autorange="reversed")  # the first method on top, as in the legend of the other charts
    # "total" is the bar, the memory chart's peak (both are peak_bytes: 'other' holds what no tensor
    # accounts for); "saved for backward" is everything the first step kept for backward, of which
    # "activations" is the part still alive at the peak: two different quantities, both named
    table = {
        "columns": [
            "method",
            *(c.replace("_", " ") for c in BREAKDOWN_ORDER),
            "total (= peak)",
            "saved for backward (all, first step)",
        ],
        "rows": [
            [
                m,
                *(memory_text(picked[m].get(c, 0)) for c in BREAKDOWN_ORDER),
                _total_text(totals[m], at_batch[m].peak_bytes),
                memory_text(at_batch[m].activation_bytes) if at_batch[m].activation_bytes is not None else "N/A",
            ]
            for m in methods
        ],
    }
    title = f"Memory at the peak, batch {batch}" if batch else "Memory at the peak"
    layout = figure_layout(
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
    return [method, str(rows[0].batch_size), layers, *map(sig_digits, stats)]


@plotly_safe
def fidelity(rows: list[FidelityRow]) -> dict:
    """Relative error of the sampled weight gradient per layer; layers where it is undefined are gaps
    in the line, named in the legend and the table, never points at 0."""
    data, table = [], []
    for method, style in trace_styles(r.method for r in rows).items():
        rs = [r for r in rows if r.method == method]
        layers = [r.layer.split(".", 2)[-1] if r.layer.count(".") > 4 else r.layer for r in rs]
        errors = [None if fidelity_na(r) else r.relative_error for r in rs]
        na = errors.count(None)
        name = f"{method}: {NOT_APPLICABLE}" if na == len(rs) else f"{method} ({na} layers N/A)" if na else method
        data.append(line_trace(name, layers, errors, **style))
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
        "layout": figure_layout(
            "Weight-gradient relative error per layer (sampled vs exact)",
            titled_axis("layer", tickangle=-45),
            titled_axis("relative error", rangemode="tozero", hoverformat=".3~r"),
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
    styles = trace_styles(r.method for r in ok)
    data = []
    for method, rs in _by_method(ok).items():
        data.append(
            line_trace(
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
        line_trace(
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
    xaxis = memory_axis("peak memory", unit)
    yaxis = titled_axis("throughput (tokens/s)", rangemode="tozero", tickformat=".3~s")
    return {"data": data, "layout": figure_layout("Memory vs throughput", xaxis, yaxis), "table": table}


PEFT_PREFIX = "base_model.model."  # peft's wrapper: the same module as the bare model's, one bar for both


def _module(path: str) -> str:
    return path.removeprefix(PEFT_PREFIX)


def _group_label(path: str) -> str:
    return _module(path) or "(model)"


@plotly_safe
def attribution(rows: list[AttributionRow], top: int = 15) -> dict | None:
    """Saved activations by module (layer indices folded, so 'encoder.block.*.layer.0.SelfAttention'
    sums every encoder layer's), the largest first, a bar per method."""
    fine = [r for r in rows if r.groups]
    if not fine:
        return None
    grouped = {r.method: _merged(r) for r in fine}
    largest: dict[str, int] = {}
    for groups in grouped.values():
        for module, (size, _) in groups.items():
            largest[module] = max(largest.get(module, 0), size)
    names = sorted(largest, key=lambda n: (-largest[n], n))[:top]
    unit, size = memory_unit(max(largest.values()))
    styles = trace_styles(r.method for r in fine)
    data = []
    for r in fine:
        by = grouped[r.method]
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": r.method,
                "y": [n or "(model)" for n in names],
                "x": [by[n][0] / size if n in by else 0 for n in names],
                # the ops in the hover and the table: written on a bar they shrank to 6 px
                "text": [_ops_text(by[n][1]) if n in by else "" for n in names],
                "textposition": "none",
                "hovertemplate": f"%{{x:.4~r}} {unit}<br>%{{text}}",  # the trace name is stored text: never in a template
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
                _ops_text(r.groups[0].ops),
            ]
            for r in fine
        ],
    }
    layout = figure_layout(
        f"Saved activations by module, first step, batch {fine[0].batch_size}",
        memory_axis("bytes saved for backward", unit),
        titled_axis("", autorange="reversed", automargin=True),
        barmode="group",
        height=max(420, 60 + 22 * len(names) * max(1, len(fine)) // 2),
        margin={"t": 76, "l": 20, "r": 20, "b": 60},
    )
    return {"data": data, "layout": layout, "table": table}


def _merged(r: AttributionRow) -> dict[str, tuple[int, dict[str, int]]]:
    """Module -> (bytes, bytes by op) with peft's prefix dropped, so a LoRA run's modules line up
    with full's; two paths that become one are summed."""
    out: dict[str, tuple[int, dict[str, int]]] = {}
    for g in r.groups:
        size, ops = out.get(_module(g.module), (0, {}))
        ops = dict(ops)
        for op, b in g.ops.items():
            ops[op] = ops.get(op, 0) + b
        out[_module(g.module)] = (size + g.bytes, ops)
    return out


def _ops_text(ops: dict[str, int]) -> str:
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{op} {memory_text(b)}" for op, b in top)


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
