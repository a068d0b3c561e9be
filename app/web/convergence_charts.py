"""The job page's figures for `convergence` jobs: loss curves and held-out accuracy vs memory."""

from __future__ import annotations

import itertools

from contract.rows import ConvergenceRow

from .charts import (
    accuracy_range,
    figure_layout,
    line_trace,
    memory_axis,
    memory_unit,
    plotly_safe,
    titled_axis,
    trace_styles,
)


@plotly_safe
def loss_curves(rows: list[ConvergenceRow], window: int = 10) -> dict:
    """Training loss per method on one pair of axes (a trailing mean over `window` steps: per-step
    losses of small batches are mostly batch noise), plus the held-out loss at each epoch end."""
    styles = trace_styles(r.method for r in rows)
    data = []
    for r in rows:
        style = styles[r.method]
        losses = r.losses
        sums = [0.0, *itertools.accumulate(losses)]
        smooth = [(sums[n] - sums[max(0, n - window)]) / min(n, window) for n in range(1, len(losses) + 1)]
        steps = list(range(1, len(losses) + 1))
        data.append(line_trace(r.method, steps, smooth, mode="lines", legendgroup=r.method, line=style["line"]))
        evals = r.evals
        data.append(
            line_trace(
                f"{r.method} (held-out)",
                [e.step for e in evals],
                [e.loss for e in evals],
                mode="markers",
                legendgroup=r.method,
                marker=style["marker"] | {"size": style["marker"]["size"] + 1},
            )
        )
    layout = figure_layout(
        f"Training loss (mean of {window} steps)", titled_axis("step"), titled_axis("loss"), hovermode="x unified"
    )
    return {"data": data, "layout": layout}


@plotly_safe
def accuracy_vs_memory(rows: list[ConvergenceRow]) -> dict:
    styles = trace_styles(r.method for r in rows)
    unit, size = memory_unit(max((r.peak_bytes for r in rows), default=0))
    data = [
        line_trace(
            r.method,
            [r.peak_bytes / size],
            [100 * r.accuracy],
            mode="markers+text",
            text=[f"{r.method} {100 * r.accuracy:.1f}%"],
            textposition="top center",
            marker=styles[r.method]["marker"] | {"size": 12},
        )
        for r in rows
    ]
    widest = max((r.peak_bytes for r in rows), default=0) / size
    # memory from zero, with room right of the last point for its label
    xaxis = memory_axis("peak memory, measured", unit, range=[0, 1.2 * widest or 1])
    yaxis = titled_axis("held-out accuracy (%)", ticksuffix="%", range=accuracy_range([100 * r.accuracy for r in rows]))
    return {"data": data, "layout": figure_layout("Held-out accuracy vs peak memory", xaxis, yaxis, showlegend=False)}
