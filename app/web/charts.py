"""Figures for the dashboards, built on the server from aggregated rows (plain Plotly JSON: the
browser only draws, it never receives rows it does not plot).

A figure may also carry a `table` ({"columns": [...], "rows": [[str, ...], ...]}) that dash.js
draws beside it: the exact numbers, and "N/A" where a value is undefined, which a thin bar or a
point left out of a line cannot say on its own."""

from __future__ import annotations

import datetime as dt
import itertools
import math

UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))
# plotly's default qualitative colours, assigned per method so a method's traces match across
# series; less its red, which here means OOM markers and activations only
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
RED = "#d62728"
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "triangle-down", "star", "hexagon", "pentagon")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations", "other")
# activations are what the methods change: drawn first, from zero, in the one saturated colour, so
# their length compares across methods even where they are a sliver of the total
BREAKDOWN_ORDER = ("activations", *(c for c in CATEGORIES if c != "activations"))
BREAKDOWN_COLORS = {
    "activations": RED,
    "parameters": "#c6dbef",
    "gradients": "#9ecae1",
    "optimizer_state": "#6baed6",
    "other": "#d9d9d9",
}
LOG_BATCH_RATIO = 8  # batch sizes spanning this factor or more get log2 spacing
MAX_BATCH_TICKS = 12
# the profiler stood 1e-30 in for a zero exact gradient (now it reports null): relative to nothing,
# an error is undefined, and the 0.0 it showed read as a perfect score
NO_GRADIENT = 1e-20
ACCURACY_SPAN = 5.0  # percentage points: the least accuracy axis, so seed noise does not fill the chart
NOT_APPLICABLE = "N/A (exact gradient is zero)"
METRICS = {  # history columns: what they are called in words, and the unit of a non-memory column
    "peak_bytes": ("peak memory", None),
    "first_step_peak_bytes": ("first-step peak memory", None),
    "activation_bytes": ("activation memory", None),
    "tokens_per_s": ("throughput", "tokens/s"),
}


def memory_unit(largest: float) -> tuple[str, int]:
    """The largest unit the biggest value reaches 1 in, so ticks read 0 to 1023 (never 0.0944815)."""
    return next(((name, size) for name, size in UNITS if largest >= size), UNITS[-1])


def _digits(v: float) -> str:
    """Three significant digits, trailing zeros kept (1.50 beside 1.19), never 1.02e+03 below 1024."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:#.3g}"


def memory_text(n: float | None) -> str:
    """A byte count in its own readable unit: '96.7 MiB', '2.13 GiB'."""
    if n is None:
        return ""
    if n == 0:
        return "0"
    name, size = memory_unit(abs(n))
    return f"{_digits(n / size)} {name}"


def _axis(title: str, **extra) -> dict:
    return {"title": {"text": title}, "automargin": True, **extra}


def _memory_axis(quantity: str, unit: str, **extra) -> dict:
    # from zero: a 0.003 MiB difference on a 96 MiB peak must look as small as it is
    return _axis(f"{quantity} ({unit})", rangemode="tozero", tickformat=".3~r", hoverformat=".4~r", **extra)


def _batch_axis(sizes) -> dict:
    """Ticks only at whole batch sizes (a linear axis over 2..4 put them at 2.5 and 3.5); log2
    spacing once the sizes span LOG_BATCH_RATIO or more, else 8, 16, 32, 64 crowd the left edge."""
    sizes = sorted({int(s) for s in sizes})
    axis = _axis("batch size", tickformat="d")
    if not sizes:
        return axis
    log = sizes[-1] >= LOG_BATCH_RATIO * sizes[0]
    ticks = sizes
    if len(sizes) > MAX_BATCH_TICKS:  # too many to label each: powers of two, or plotly's own integers
        powers = [2**k for k in range(math.ceil(math.log2(sizes[0])), math.floor(math.log2(sizes[-1])) + 1)]
        ticks = powers[:: math.ceil(len(powers) / MAX_BATCH_TICKS)] if log else []
    if log:
        axis["type"] = "log"
    if ticks:
        axis |= {"tickmode": "array", "tickvals": ticks, "ticktext": [str(t) for t in ticks]}
    return axis


def _layout(title: str, xaxis: dict, yaxis: dict, **extra) -> dict:
    return {
        # left-aligned just above the plot area: the modebar takes the top right corner of the
        # figure, and a centred title in the top margin ran under it
        "title": {
            "text": title,
            "x": 0,
            "xref": "paper",
            "xanchor": "left",
            "y": 1,
            "yref": "paper",
            "yanchor": "bottom",
            "pad": {"b": 12},
        },
        "xaxis": xaxis,
        "yaxis": yaxis,
        "margin": {"t": 76, "l": 70, "r": 20, "b": 60},
        "legend": {"orientation": "v", "x": 1.02, "y": 1},
        "autosize": True,
        **extra,
    }


def _styles(methods) -> dict[str, dict]:
    """One look per method, the same in every series of a figure. Each later method is drawn over the
    earlier ones with a smaller marker of another shape and a thinner, dashed line, so where two
    methods have the same values both stay visible."""
    out = {}
    for i, method in enumerate(dict.fromkeys(methods)):
        color = PALETTE[i % len(PALETTE)]
        out[method] = {
            "line": {"color": color, "dash": DASHES[i % len(DASHES)], "width": max(1.5, 3 - 0.5 * i)},
            "marker": {"color": color, "symbol": SYMBOLS[i % len(SYMBOLS)], "size": max(5, 12 - 2 * i)},
        }
    return out


def _line(name: str, xs: list, ys: list, **extra) -> dict:
    return {"type": "scatter", "mode": "lines+markers", "name": name, "x": xs, "y": ys, **extra}


def _by_method(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["batch_size"]):
        out.setdefault(r["method"], []).append(r)
    return out


def memory_vs_batch(rows: list[dict], device_bytes: float | None, mode: str) -> dict:
    styles = _styles(r["method"] for r in rows)
    unit, size = memory_unit(max([r.get("peak_bytes") or 0 for r in rows] + [device_bytes or 0]))
    data = []
    for method, rs in _by_method(rows).items():
        ok = [r for r in rs if not r.get("oom") and r.get("peak_bytes")]
        xs, ys = [r["batch_size"] for r in ok], [r["peak_bytes"] / size for r in ok]
        data.append(_line(method, xs, ys, legendgroup=method, **styles[method]))
        oom = [r for r in rs if r.get("oom")]
        if oom:
            y = [(r.get("peak_bytes") or device_bytes or 0) / size for r in oom]
            marker = {"symbol": "x", "size": 12, "color": RED}
            xs = [r["batch_size"] for r in oom]
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
            f"Peak memory vs batch size{label}",
            _batch_axis(r["batch_size"] for r in rows),
            _memory_axis("peak memory", unit),
            shapes=shapes,
            hovermode="x unified",
        ),
    }


def max_batch_bars(max_batch: list[dict]) -> dict:
    base = next((m["max_batch_size"] for m in max_batch if m["method"] == "full"), None)
    text = [f"{m['max_batch_size'] / base:.2f}x full" if base else "" for m in max_batch]
    styles = _styles(m["method"] for m in max_batch)
    bar = {
        "type": "bar",
        "x": [m["method"] for m in max_batch],
        "y": [m["max_batch_size"] for m in max_batch],
        "text": text,
        "textposition": "outside",
        "cliponaxis": False,
        "marker": {"color": [styles[m["method"]]["marker"]["color"] for m in max_batch]},
        "name": "max batch",
    }
    largest = max((m["max_batch_size"] for m in max_batch), default=0)
    # whole batch sizes only: below 10 plotly's automatic step would be 0.5
    count = _axis("largest batch size", rangemode="tozero", tickformat="d", **({"dtick": 1} if largest <= 10 else {}))
    return {"data": [bar], "layout": _layout("Largest batch that fits", _axis("method"), count, showlegend=False)}


def throughput(rows: list[dict]) -> dict:
    styles = _styles(r["method"] for r in rows)
    data = []
    for method, rs in _by_method(rows).items():
        ok = [r for r in rs if r.get("tokens_per_s")]
        if ok:
            data.append(_line(method, [r["batch_size"] for r in ok], [r["tokens_per_s"] for r in ok], **styles[method]))
    speed = _axis("throughput (tokens/s)", rangemode="tozero", tickformat=".3~s", hoverformat=",.0f")
    return {
        "data": data,
        "layout": _layout(
            "Throughput vs batch size", _batch_axis(r["batch_size"] for r in rows), speed, hovermode="x unified"
        ),
    }


def breakdown(rows: list[dict]) -> dict:
    """Horizontal stacked bars per method at the largest batch every method ran without OOM, the
    activations labelled at each bar's end, and every category's value in the companion table."""
    fine = [r for r in rows if r.get("breakdown") and not r.get("oom")]
    common = None
    for rs in _by_method(fine).values():
        sizes = {r["batch_size"] for r in rs}
        common = sizes if common is None else common & sizes
    batch = max(common) if common else None
    picked = {r["method"]: r["breakdown"] for r in fine if r["batch_size"] == batch}
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


def fidelity_na(row: dict) -> bool:
    """True where the exact weight gradient is zero (LoRA's frozen base weight): the old profiler
    form has exact_norm 1e-30 and relative_error 0.0, the new one nulls."""
    norm = row.get("exact_norm")
    return row.get("relative_error") is None or norm is None or norm < NO_GRADIENT


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _fidelity_summary(method: str, rows: list[dict]) -> list[str]:
    defined = [r for r in rows if not fidelity_na(r)]
    na = len(rows) - len(defined)
    layers = f"{len(rows)} ({na} N/A)" if na else str(len(rows))
    if not defined:
        return [method, str(rows[0].get("batch_size", "")), layers, *[NOT_APPLICABLE] * 4]
    stats = [
        _mean([r["relative_error"] for r in defined]),
        max(r["relative_error"] for r in defined),
        _mean([r.get("relative_bias") or 0 for r in defined]),
        _mean([r.get("relative_variance") or 0 for r in defined]),
    ]
    return [method, str(rows[0].get("batch_size", "")), layers, *map(_digits, stats)]


def fidelity(rows: list[dict]) -> dict:
    """Relative error of the sampled weight gradient per layer; layers where it is undefined are gaps
    in the line, named in the legend and the table, never points at 0."""
    data, table = [], []
    for method, style in _styles(r["method"] for r in rows).items():
        rs = [r for r in rows if r["method"] == method]
        layers = [r["layer"].split(".", 2)[-1] if r["layer"].count(".") > 4 else r["layer"] for r in rs]
        errors = [None if fidelity_na(r) else r["relative_error"] for r in rs]
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


def loss_curves(rows: list[dict], window: int = 10) -> dict:
    """Training loss per method on one pair of axes (a trailing mean over `window` steps: per-step
    losses of small batches are mostly batch noise), plus the held-out loss at each epoch end."""
    styles = _styles(r["method"] for r in rows)
    data = []
    for r in rows:
        style = styles[r["method"]]
        losses = r["losses"]
        sums = [0.0, *itertools.accumulate(losses)]
        smooth = [(sums[n] - sums[max(0, n - window)]) / min(n, window) for n in range(1, len(losses) + 1)]
        steps = list(range(1, len(losses) + 1))
        data.append(_line(r["method"], steps, smooth, mode="lines", legendgroup=r["method"], line=style["line"]))
        evals = r.get("evals") or []
        data.append(
            _line(
                f"{r['method']} (held-out)",
                [e["step"] for e in evals],
                [e["loss"] for e in evals],
                mode="markers",
                legendgroup=r["method"],
                marker=style["marker"] | {"size": style["marker"]["size"] + 1},
            )
        )
    layout = _layout(f"Training loss (mean of {window} steps)", _axis("step"), _axis("loss"), hovermode="x unified")
    return {"data": data, "layout": layout}


def accuracy_vs_memory(rows: list[dict]) -> dict:
    styles = _styles(r["method"] for r in rows)
    unit, size = memory_unit(max((r["peak_bytes"] for r in rows), default=0))
    data = [
        _line(
            r["method"],
            [r["peak_bytes"] / size],
            [100 * r["accuracy"]],
            mode="markers+text",
            text=[f"{r['method']} {100 * r['accuracy']:.1f}%"],
            textposition="top center",
            marker=styles[r["method"]]["marker"] | {"size": 12},
        )
        for r in rows
    ]
    widest = max((r["peak_bytes"] for r in rows), default=0) / size
    # memory from zero, with room right of the last point for its label
    xaxis = _memory_axis("peak memory, measured", unit, range=[0, 1.2 * widest or 1])
    yaxis = _axis("held-out accuracy (%)", ticksuffix="%", range=_accuracy_range([100 * r["accuracy"] for r in rows]))
    return {"data": data, "layout": _layout("Held-out accuracy vs peak memory", xaxis, yaxis, showlegend=False)}


def _accuracy_range(percents: list[float]) -> list[float]:
    """At least ACCURACY_SPAN points of axis (within 0-100): fitted to the points, 86.1% against
    85.8% filled the whole height, though a few hundred held-out examples cannot tell them apart."""
    low, high = min(percents, default=0), max(percents, default=100)
    middle, half = (low + high) / 2, max(ACCURACY_SPAN, 1.2 * (high - low)) / 2
    shift = max(0, half - middle) - max(0, middle + half - 100)  # slid back inside 0-100
    return [max(0.0, middle - half + shift), min(100.0, middle + half + shift)]


def _time_range(stamps: list[str]) -> list[str] | None:
    """At least an hour of axis: points from one sitting otherwise get ticks at half seconds."""
    if not stamps:
        return None
    times = [dt.datetime.fromisoformat(s).replace(tzinfo=None) for s in stamps]
    low, high = min(times), max(times)
    pad = max(dt.timedelta(hours=1) - (high - low), dt.timedelta()) / 2 + dt.timedelta(minutes=5)
    return [(low - pad).isoformat(sep=" "), (high + pad).isoformat(sep=" ")]


def history(points: list[dict], metric: str) -> dict:
    """`metric` is the column, then the unit the values arrive in where it is not the column's own
    ("peak_bytes GiB"); memory is shown in the unit its largest value reads best in."""
    column, _, given = metric.partition(" ")
    words, unit = METRICS.get(column, (column.replace("_", " "), given))
    values = [p["value"] for p in points]
    if column.endswith("_bytes"):
        to_bytes = dict(UNITS).get(given or "B", 1)
        unit, size = memory_unit(max((v * to_bytes for v in values), default=0))
        values = [v * to_bytes / size for v in values]
        yaxis = _memory_axis(words, unit)
    else:
        yaxis = _axis(f"{words} ({unit})" if unit else words, rangemode="tozero", tickformat=".3~s")
    data = []
    styles = _styles(p["method"] for p in points)
    for method, style in styles.items():
        idx = [i for i, p in enumerate(points) if p["method"] == method]
        text = [points[i]["job_id"] for i in idx]
        xs, ys = [points[i]["at"] for i in idx], [values[i] for i in idx]
        hover = f"%{{y}} {unit or ''} · job %{{text}}"
        data.append(_line(method, xs, ys, text=text, hovertemplate=hover, **style))
    span = _time_range([p["at"] for p in points])
    xaxis = _axis("job finished", type="date", **({"range": span} if span else {}))
    return {
        "data": data,
        "layout": _layout(f"{words[0].upper()}{words[1:]} over time", xaxis, yaxis, hovermode="x unified"),
    }
