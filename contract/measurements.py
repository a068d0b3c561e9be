"""The registry of measurements: what a spec may ask for, which rows each one fills, and how the
CLI and the job page show them. Adding a measurement is one row model (`contract/rows.py`), one
entry here, its producer (`profiler/producers/registry.py`) and its chart (`app/web/charts.py`, `JOB_CHARTS`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .rows import AttributionRow, ConvergenceRow, FidelityRow, MaxBatchRow, Row, TrialRow

Unit = Literal["text", "int", "mib", "kib", "rate", "percent", "seconds", "digits", "flag"]


@dataclass(frozen=True)
class Column:
    """One column of the CLI's table: a row field and how to print it."""

    header: str
    field: str
    unit: Unit = "text"


@dataclass(frozen=True)
class Measurement:
    name: str  # as written in a spec's `measurements`
    field: str  # the JobResult list its rows go to
    row: type[Row]
    description: str
    columns: tuple[Column, ...]  # the CLI table
    charts: tuple[str, ...]  # job-page figures, keys of app.web.charts.JOB_CHARTS
    per_batch: bool = False  # needs the spec's batch_sizes
    estimate: bool = True  # runs in `estimate` mode (no kernels, no values)
    why_not_estimate: str = ""


_TRIAL_COLUMNS = (
    Column("method", "method"),
    Column("batch", "batch_size", "int"),
    Column("mode", "mode"),
    Column("peak MiB", "peak_bytes", "mib"),
    Column("1st-step MiB", "first_step_peak_bytes", "mib"),
    Column("activations MiB", "activation_bytes", "mib"),
    Column("tokens/s", "tokens_per_s", "rate"),
    Column("oom", "oom", "flag"),
    Column("error", "error"),
)

MEASUREMENTS: dict[str, Measurement] = {
    m.name: m
    for m in (
        Measurement(
            "peak_memory",
            "results",
            TrialRow,
            "peak allocated bytes per (method, batch size), with a breakdown, over a few training steps",
            _TRIAL_COLUMNS,
            ("memory", "ranks", "breakdown"),
            per_batch=True,
        ),
        Measurement(
            "memory_attribution",
            "attribution",
            AttributionRow,
            "at the largest batch size: the first step's saved activations by module and by op",
            (
                Column("method", "method"),
                Column("batch", "batch_size", "int"),
                Column("mode", "mode"),
                Column("saved MiB", "total_bytes", "mib"),
                Column("modules", "module_count", "int"),
                Column("oom", "oom", "flag"),
                Column("error", "error"),
            ),
            ("attribution",),
            per_batch=True,
        ),
        Measurement(
            "throughput",
            "results",
            TrialRow,
            "step time and tokens/s per (method, batch size), after warm-up",
            _TRIAL_COLUMNS,
            ("throughput", "frontier"),
            per_batch=True,
            estimate=False,
            why_not_estimate="traces without running kernels, so it cannot measure throughput",
        ),
        Measurement(
            "max_batch_size",
            "max_batch",
            MaxBatchRow,
            "the largest batch that fits the device (or target_memory_gb), found in few probes",
            (Column("method", "method"), Column("max batch", "max_batch_size", "int"), Column("mode", "mode")),
            ("max_batch",),
        ),
        Measurement(
            "fidelity",
            "fidelity",
            FidelityRow,
            "per replaced layer: relative error, bias and variance of the sampled weight gradient",
            (
                Column("method", "method"),
                Column("layer", "layer"),
                Column("rel. error", "relative_error", "digits"),
                Column("rel. variance", "relative_variance", "digits"),
            ),
            ("fidelity",),
            per_batch=True,
            estimate=False,
            why_not_estimate="has no tensor values, so it cannot measure fidelity",
        ),
        Measurement(
            "convergence",
            "convergence",
            ConvergenceRow,
            "a real fine-tuning run on SST-2 per method: loss curve, held-out accuracy, time, memory",
            (
                Column("method", "method"),
                Column("steps", "steps", "int"),
                Column("accuracy %", "accuracy", "percent"),
                Column("val loss", "val_loss", "digits"),
                Column("peak MiB", "peak_bytes", "mib"),
                Column("cache KiB", "cache_bytes", "kib"),
                Column("tokens/s", "tokens_per_s", "rate"),
                Column("train s", "train_time_s", "seconds"),
            ),
            ("loss", "accuracy"),
            estimate=False,
            why_not_estimate="runs no kernels, so it cannot train",
        ),
    )
}

# the JobResult lists, each with the row model its items validate against
FIELDS: dict[str, type[Row]] = {m.field: m.row for m in MEASUREMENTS.values()}
