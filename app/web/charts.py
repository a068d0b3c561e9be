"""Figures for the dashboards, built on the server from aggregated rows (plain Plotly JSON: the
browser only draws, it never receives rows it does not plot)."""

from __future__ import annotations

import itertools

MIB = 2**20
# plotly's default qualitative colours, assigned per method so a method's traces match across series
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations", "other")


def _layout(title: str, x: str, y: str, **extra) -> dict:
    return {
        "title": {"text": title},
        "xaxis": {"title": {"text": x}},
        "yaxis": {"title": {"text": y}},
        "margin": {"t": 50, "l": 70, "r": 20, "b": 60},
        "legend": {"orientation": "v", "x": 1.02, "y": 1},
        "autosize": True,
        **extra,
    }


def _line(name: str, xs: list, ys: list, **extra) -> dict:
    return {"type": "scatter", "mode": "lines+markers", "name": name, "x": xs, "y": ys, **extra}


def _by_method(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["batch_size"]):
        out.setdefault(r["method"], []).append(r)
    return out


def memory_vs_batch(rows: list[dict], device_bytes: float | None, mode: str) -> dict:
    data = []
    for method, rs in _by_method(rows).items():
        ok = [r for r in rs if not r.get("oom") and r.get("peak_bytes")]
        data.append(_line(method, [r["batch_size"] for r in ok], [r["peak_bytes"] / MIB for r in ok]))
        oom = [r for r in rs if r.get("oom")]
        if oom:
            y = [(r.get("peak_bytes") or device_bytes or 0) / MIB for r in oom]
            marker = {"symbol": "x", "size": 12, "color": "#d62728"}
            data.append(_line(f"{method} (OOM)", [r["batch_size"] for r in oom], y, mode="markers", marker=marker))
    shapes = []
    if device_bytes:
        shapes.append(
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": device_bytes / MIB,
                "y1": device_bytes / MIB,
                "line": {"dash": "dash", "color": "#888"},
            }
        )
    label = "estimated" if mode == "estimate" else "measured"
    return {
        "data": data,
        "layout": _layout(f"Peak memory vs batch size ({label})", "batch size", "peak MiB", shapes=shapes),
    }


def max_batch_bars(max_batch: list[dict]) -> dict:
    base = next((m["max_batch_size"] for m in max_batch if m["method"] == "full"), None)
    text = [f"{m['max_batch_size'] / base:.2f}x full" if base else "" for m in max_batch]
    bar = {
        "type": "bar",
        "x": [m["method"] for m in max_batch],
        "y": [m["max_batch_size"] for m in max_batch],
        "text": text,
        "textposition": "outside",
        "name": "max batch",
    }
    return {"data": [bar], "layout": _layout("Largest batch that fits", "method", "batch size")}


def throughput(rows: list[dict]) -> dict:
    data = []
    for method, rs in _by_method(rows).items():
        ok = [r for r in rs if r.get("tokens_per_s")]
        if ok:
            data.append(_line(method, [r["batch_size"] for r in ok], [r["tokens_per_s"] for r in ok]))
    return {"data": data, "layout": _layout("Throughput", "batch size", "tokens / s")}


def breakdown(rows: list[dict]) -> dict:
    """Stacked bars per method at the largest batch every method ran without OOM."""
    fine = [r for r in rows if r.get("breakdown") and not r.get("oom")]
    common = None
    for rs in _by_method(fine).values():
        sizes = {r["batch_size"] for r in rs}
        common = sizes if common is None else common & sizes
    batch = max(common) if common else None
    picked = {r["method"]: r for r in fine if r["batch_size"] == batch}
    methods = list(picked)
    data = [
        {
            "type": "bar",
            "name": c.replace("_", " "),
            "x": methods,
            "y": [picked[m]["breakdown"].get(c, 0) / MIB for m in methods],
        }
        for c in CATEGORIES
    ]
    return {"data": data, "layout": _layout(f"Memory at the peak, batch {batch}", "method", "MiB", barmode="stack")}


def fidelity(rows: list[dict]) -> dict:
    data = []
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        layers = [r["layer"].split(".", 2)[-1] if r["layer"].count(".") > 4 else r["layer"] for r in rs]
        data.append(_line(method, layers, [r["relative_error"] for r in rs]))
    return {
        "data": data,
        "layout": _layout(
            "Weight-gradient relative error per layer",
            "layer",
            "relative error",
            xaxis={"tickangle": -45, "automargin": True},
        ),
    }


def loss_curves(rows: list[dict], window: int = 10) -> dict:
    """Training loss per method on one pair of axes (a trailing mean over `window` steps: per-step
    losses of small batches are mostly batch noise), plus the held-out loss at each epoch end."""
    data = []
    for i, r in enumerate(rows):
        color = PALETTE[i % len(PALETTE)]
        losses = r["losses"]
        sums = [0.0, *itertools.accumulate(losses)]
        smooth = [(sums[n] - sums[max(0, n - window)]) / min(n, window) for n in range(1, len(losses) + 1)]
        steps = list(range(1, len(losses) + 1))
        data.append(_line(r["method"], steps, smooth, mode="lines", legendgroup=r["method"], line={"color": color}))
        evals = r.get("evals") or []
        data.append(
            _line(
                f"{r['method']} (held-out)",
                [e["step"] for e in evals],
                [e["loss"] for e in evals],
                mode="markers",
                legendgroup=r["method"],
                marker={"symbol": "diamond", "size": 9, "color": color},
            )
        )
    return {"data": data, "layout": _layout(f"Training loss (mean of {window} steps)", "step", "loss")}


def accuracy_vs_memory(rows: list[dict]) -> dict:
    data = [
        _line(
            r["method"],
            [r["peak_bytes"] / MIB],
            [100 * r["accuracy"]],
            mode="markers+text",
            text=[r["method"]],
            textposition="top center",
            marker={"size": 12, "color": PALETTE[i % len(PALETTE)]},
        )
        for i, r in enumerate(rows)
    ]
    peaks = [r["peak_bytes"] / MIB for r in rows]
    pad = 0.15 * (max(peaks) - min(peaks)) or 0.15 * max(peaks)  # room for the method labels
    return {
        "data": data,
        "layout": _layout(
            "Held-out accuracy vs peak memory",
            "peak MiB (measured)",
            "accuracy %",
            showlegend=False,
            xaxis={"title": {"text": "peak MiB (measured)"}, "range": [min(peaks) - pad, max(peaks) + pad]},
        ),
    }


def history(points: list[dict], metric: str) -> dict:
    data = []
    for method in dict.fromkeys(p["method"] for p in points):
        ps = [p for p in points if p["method"] == method]
        data.append(_line(method, [p["at"] for p in ps], [p["value"] for p in ps], text=[p["job_id"] for p in ps]))
    return {"data": data, "layout": _layout(f"{metric} over time", "job finished", metric)}
