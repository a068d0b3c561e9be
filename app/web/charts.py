"""Figures for the dashboards, built on the server from aggregated rows (plain Plotly JSON: the
browser only draws, it never receives rows it does not plot).

A figure may also carry a `table` ({"columns": [...], "rows": [[str, ...], ...]}) that dash.js
draws beside it: the exact numbers, and "N/A" where a value is undefined, which a thin bar or a
point left out of a line cannot say on its own."""

from __future__ import annotations

import datetime as dt
import functools
import math
import zlib

from contract.rows import CATEGORIES

UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))
# plotly's default qualitative colours, assigned per method so a method's traces match across
# series; less its red, which here means OOM markers and activations only
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
RED = "#d62728"
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "triangle-down", "star", "hexagon", "pentagon")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
# one colour and dash per method family on every page (job charts, compare, history), so a method
# reads the same everywhere; a rate ("wtacrs@0.3") draws as its family (its marker tells rates apart)
METHOD_STYLES = {
    "full": ("#1f77b4", "solid"),
    "lora": ("#ff7f0e", "dash"),
    "checkpointing": ("#2ca02c", "dot"),
    "wtacrs": ("#9467bd", "dashdot"),
    "lora+wtacrs": ("#8c564b", "longdash"),
    "crs": ("#e377c2", "longdashdot"),
    "topk": ("#7f7f7f", "dash"),
    "velora": ("#bcbd22", "dot"),
    "meft1": ("#17becf", "dashdot"),
    "meft2": ("#17becf", "longdash"),
    "meft3": ("#17becf", "longdashdot"),
    "offload": ("#393b79", "dash"),
    "selective-checkpointing": ("#637939", "dashdot"),
}
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


# Plotly reads a subset of HTML in every text it draws (<b>, <i>, <br>, <a href>, <span style>)
# and decodes entities: a method, layer or module name from a client is escaped before it reaches a
# figure, so it shows as the characters it is. The templates are ours and keep their <br>; what they
# substitute (%{text}, %{x}) is escaped data, decoded back to plain characters when drawn.
_PLOTLY_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_TEMPLATE_KEYS = frozenset({"hovertemplate", "texttemplate"})


def plotly_text(value: str) -> str:
    """`value` as Plotly text that draws exactly those characters (no markup, no link)."""
    return value.translate(_PLOTLY_ESCAPES)


def escape_figure(node, key: str | None = None):
    """Every string of a figure's data and layout escaped for Plotly, but our hover templates: names,
    legend entries, category values (tick labels), hover text and annotations alike, so no builder
    has to remember which of its strings came from a client. A figure's `table` is drawn with
    textContent and stays as it is."""
    if isinstance(node, str):
        return node if key in _TEMPLATE_KEYS else plotly_text(node)
    if isinstance(node, dict):
        return {k: (v if k == "table" and key is None else escape_figure(v, k)) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [escape_figure(v, key) for v in node]
    return node


def plotly_safe(build):
    """Decorates a figure builder: the figure it returns (or None) goes out through `escape_figure`."""

    @functools.wraps(build)
    def safe(*args, **kwargs):
        figure = build(*args, **kwargs)
        return None if figure is None else escape_figure(figure)

    return safe


def memory_unit(largest: float) -> tuple[str, int]:
    """The largest unit the biggest value reaches 1 in, so ticks read 0 to 1023 (never 0.0944815)."""
    return next(((name, size) for name, size in UNITS if largest >= size), UNITS[-1])


def sig_digits(v: float) -> str:
    """Three significant digits, trailing zeros kept (1.50 beside 1.19), never 1.02e+03 below 1024."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:#.3g}"


def memory_text(n: float | None) -> str:
    """A byte count in its own readable unit: '96.7 MiB', '2.13 GiB'."""
    if n is None:
        return ""
    if n == 0:
        return "0"
    name, size = memory_unit(abs(n))
    return f"{sig_digits(n / size)} {name}"


def titled_axis(title: str, **extra) -> dict:
    """A Plotly axis with `title`, its margin grown to fit the tick labels; `extra` adds or overrides keys."""
    return {"title": {"text": title}, "automargin": True, **extra}


def memory_axis(quantity: str, unit: str, **extra) -> dict:
    """An axis of `quantity` in `unit` (from `memory_unit`), from zero: a 0.003 MiB difference on a
    96 MiB peak must look as small as it is."""
    return titled_axis(f"{quantity} ({unit})", rangemode="tozero", tickformat=".3~r", hoverformat=".4~r", **extra)


def batch_axis(sizes) -> dict:
    """Ticks only at whole batch sizes (a linear axis over 2..4 put them at 2.5 and 3.5); log2
    spacing once the sizes span LOG_BATCH_RATIO or more, else 8, 16, 32, 64 crowd the left edge."""
    sizes = sorted({int(s) for s in sizes})
    axis = titled_axis("batch size", tickformat="d")
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


def figure_layout(title: str, xaxis: dict, yaxis: dict, **extra) -> dict:
    """Every figure's layout: its title, its two axes, the margins and the legend; `extra` adds keys."""
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


def _stable(text: str) -> int:
    """The same number for the same text in every process (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode())


def method_name(series: str) -> str:
    """The method of a trace or series name: 'full · fsdp×8 [cuda]' and 'full (OOM)' are 'full'."""
    return series.split(" [", 1)[0].split(" · ", 1)[0].split(" (", 1)[0].strip()


def method_style(series: str) -> tuple[str, str]:
    """(colour, dash) of a method, a function of its name alone: the known families a fixed entry (a
    rate, 'wtacrs@0.3', its family's), any other name a stable hash into the palette, never solid
    (full's). Never RED, which means OOM and activations."""
    method = method_name(series)
    family = method.partition("@")[0]
    if family in METHOD_STYLES:
        return METHOD_STYLES[family]
    h = _stable(method)
    return PALETTE[h % len(PALETTE)], DASHES[1 + (h // len(PALETTE)) % (len(DASHES) - 1)]


def trace_styles(methods) -> dict[str, dict]:
    """One look per method: its colour and dash from `method_style`, the same on every page. Each
    later method in a figure is drawn over the earlier ones with a smaller marker of another shape and
    a thinner line, so where two methods have the same values both stay visible."""
    out = {}
    for i, method in enumerate(dict.fromkeys(methods)):
        color, dash = method_style(method)
        out[method] = {
            "line": {"color": color, "dash": dash, "width": max(1.5, 3 - 0.5 * i)},
            "marker": {"color": color, "symbol": SYMBOLS[i % len(SYMBOLS)], "size": max(8, 12 - i)},
        }
    return out


def ratio_digits(r: float) -> str:
    """2.4, 1.25, 12.4, 140: three significant digits at most, no trailing zeros."""
    return f"{r:,.0f}" if r >= 100 else f"{r:.3g}"


def memory_ratio_words(ratio: float | None, baseline: str) -> str:
    """`ratio` is the baseline's memory / this one's: '2.5x less memory than full', '1.3x more memory
    than full', 'same memory as full'; '' where undefined."""
    if not ratio or not math.isfinite(ratio) or ratio < 0:
        return ""
    if ratio_digits(ratio) == "1" or ratio_digits(1 / ratio) == "1":
        return f"same memory as {baseline}"
    if ratio > 1:
        return f"{ratio_digits(ratio)}x less memory than {baseline}"
    return f"{ratio_digits(1 / ratio)}x more memory than {baseline}"


def share_words(ratio: float | None, baseline: str, what: str) -> str:
    """`ratio` is this / the baseline's, of something more is better of: '0.8x full's tokens/s',
    'same tokens/s as full'."""
    if ratio is None or not math.isfinite(ratio) or ratio < 0:
        return ""
    if ratio_digits(ratio) == "1":
        return f"same {what} as {baseline}"
    return f"{ratio_digits(ratio)}x {baseline}'s {what}"


def line_trace(name: str, xs: list, ys: list, **extra) -> dict:
    """A lines-and-markers scatter trace named `name`; `extra` (a style from `trace_styles`) adds keys."""
    return {"type": "scatter", "mode": "lines+markers", "name": name, "x": xs, "y": ys, **extra}


def accuracy_range(percents: list[float]) -> list[float]:
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


@plotly_safe
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
        yaxis = memory_axis(words, unit)
    else:
        yaxis = titled_axis(f"{words} ({unit})" if unit else words, rangemode="tozero", tickformat=".3~s")
    data = []
    styles = trace_styles(p["method"] for p in points)
    for method, style in styles.items():
        idx = [i for i, p in enumerate(points) if p["method"] == method]
        text = [f"batch {points[i]['batch']} · job {points[i]['job_id']}" for i in idx]
        xs, ys = [points[i]["at"] for i in idx], [values[i] for i in idx]
        hover = f"%{{y}} {unit or ''} · %{{text}}"
        data.append(line_trace(method, xs, ys, text=text, hovertemplate=hover, **style))
    span = _time_range([p["at"] for p in points])
    xaxis = titled_axis("job finished", type="date", **({"range": span} if span else {}))
    return {
        "data": data,
        "layout": figure_layout(f"{words[0].upper()}{words[1:]} over time", xaxis, yaxis, hovermode="x unified"),
    }
