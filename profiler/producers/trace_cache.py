"""Finished estimate trial rows, kept on disk and keyed by everything that determines them, so the
same question asked twice (by one user or two, in one job or the next) answers at once.

The key hashes the spec's fields that shape a trace (all but those listed in NOT_IN_A_TRACE: a new
spec field is in the key until someone decides otherwise), the method, the batch size, the
versions of Python, torch, transformers and peft, what the wtacrs ops are traced as (the Triton
kernels' allocations, or the reference: WTACRS_TRITON, triton's version), and the source of `contract`, `wtacrs` and
`profiler` themselves: editing the library, or upgrading torch, makes every old entry unreachable,
so a stale answer can never be served. Only estimates are kept (a measurement is an event on a
machine; a trace is a function of its inputs), and only rows that finished without an error.
`oom` is not stored: it depends on the memory target, so it is computed again on every read.
A largest-batch search's answer is kept too, keyed by its traces' key, the limit and the search's
bounds (`cached_search`).

WTACRS_TRACE_CACHE: a folder (default ~/.cache/wtacrs-prof/traces), or "off" for today's path:
every trace run afresh and the largest-batch search started from nothing (the comparison path of
benchmarks/estimate_speed.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from contract.methods import Method
from contract.rows import MaxBatchRow, TrialRow
from contract.spec import JobSpec

ENV = "WTACRS_TRACE_CACHE"
# fields of a spec that no single trace reads (which trials run, what else is measured, limits)
NOT_IN_A_TRACE = frozenset(
    {
        "methods",
        "batch_sizes",
        "measurements",
        "target_memory_gb",
        "steps",
        "warmup",
        "max_batch",
        "convergence",
        "timeout_s",
    }
)
_PACKAGES = ("contract", "wtacrs", "profiler")


def folder() -> Path | None:
    """Where entries live; None when the cache is off."""
    setting = os.environ.get(ENV, "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    if setting:
        return Path(setting)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "wtacrs-prof" / "traces"


@functools.cache
def _code_and_versions() -> str:
    import importlib.metadata

    import torch
    import transformers

    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[2]
    for package in _PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    versions = (sys.version_info[:2], torch.__version__, transformers.__version__, importlib.metadata.version("peft"))
    return f"{versions}|{digest.hexdigest()}"


def key(spec: JobSpec, method: Method, batch_size: int) -> str:
    from wtacrs import kernels

    fields = {k: v for k, v in spec.model_dump(mode="json").items() if k not in NOT_IN_A_TRACE}
    # what the wtacrs ops are traced as: the Triton kernels' allocations (which triton) or the reference
    ops = kernels.describe()
    text = json.dumps([fields, method.name, batch_size, _code_and_versions(), ops], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _path(spec: JobSpec, method: Method, batch_size: int, source: tuple[int, int] | None = None) -> Path | None:
    """A trace's entry; `source`: a row replayed from the traces of these two batch sizes instead."""
    where = folder()
    if where is None:
        return None
    name = key(spec, method, batch_size)
    if source is not None:  # apart from the traces: a lookup of a trace never finds a replayed row
        name = "replayed-" + hashlib.sha256(json.dumps([name, *source]).encode()).hexdigest()
    return where / f"{name}.json"


def _write(path: Path, data: dict) -> None:
    """Written whole or not at all; a folder that cannot be written only means no cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
            json.dump(data, tmp)
        os.replace(tmp.name, path)
    except OSError:
        pass


def _search_path(spec: JobSpec, method: Method, limit: float | None) -> Path | None:
    """Where the largest-batch answer of a (spec, method) for this limit and upper bound lives: it is
    a function of the traces (key) and of what the search was asked (the limit, spec.max_batch)."""
    where = folder()
    if where is None or spec.device != "estimate":
        return None
    asked = json.dumps([key(spec, method, 0), limit, spec.max_batch.model_dump(mode="json")], sort_keys=True)
    return where / f"largest-{hashlib.sha256(asked.encode()).hexdigest()}.json"


def cached_search(spec: JobSpec, method: Method, limit: float | None, run: Callable[[], MaxBatchRow]) -> MaxBatchRow:
    """The stored largest-batch row, or run() and keep it. Its probes are all in the cache too, but
    a search that starts without the traces' event logs (not kept: megabytes each) would choose
    other batches to trace; the answer itself is as much a function of the inputs as a trace."""
    path = _search_path(spec, method, limit)
    if path is not None:
        try:
            return MaxBatchRow.model_validate_json(path.read_text())
        except (OSError, ValueError):
            pass
    row = run()
    # kept only under the key it was asked under: a kernel that failed mid-search changed what the
    # later probes were traced as (the key names it), and a mixed answer is nobody's
    if path is not None and _search_path(spec, method, limit) == path:
        _write(path, row.model_dump(mode="json"))
    return row


def lookup(
    spec: JobSpec, method: Method, batch_size: int, limit: float | None, source: tuple[int, int] | None = None
) -> TrialRow | None:
    """The stored row of this trace (or of this replay, `source`), its `oom` for `limit`; None when
    there is none (or the cache is off)."""
    path = _path(spec, method, batch_size, source)
    if path is None or spec.device != "estimate":
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    row["oom"] = limit is not None and row["peak_bytes"] > limit
    return TrialRow.model_validate(row)


def store(spec: JobSpec, method: Method, batch_size: int, row: TrialRow, source: tuple[int, int] | None = None) -> None:
    """Keep a finished estimate row (a replayed one only as such, `source`)."""
    path = _path(spec, method, batch_size, source)
    if path is None or spec.device != "estimate" or row.error or row.oom_message or row.peak_bytes is None:
        return
    if row.predicted != (source is not None):
        return
    data = row.model_dump(mode="json")
    data.pop("oom")
    _write(path, data)


def cached(
    spec: JobSpec, method: Method, batch_size: int, limit: float | None, run: Callable[[], TrialRow]
) -> TrialRow:
    """The stored row, or run() and keep what it gives."""
    row = lookup(spec, method, batch_size, limit)
    if row is None:
        row = run()
        store(spec, method, batch_size, row)
    return row
