"""A trial's step under torch.compile (spec `compile: true`): compiling it in warm-up steps, and
measuring its memory the way that keeps it compiled.

A TorchDispatchMode active around a compiled step (the storage tracker that gives eager rows
their per-category breakdown) makes Dynamo run that step eagerly, and the code stays eager for
every later step: a compiled row measured so would report eager memory and eager step times. So
a compiled step's memory is the allocator's own (CUDA statistics; on cpu the caller's
CPUAllocatorRecord, torch.profiler's record, which leaves compiled code compiled) with the bytes
saved for backward from saved-tensor hooks, and no breakdown by category.
"""

from __future__ import annotations

import os
import time

import torch

from wtacrs.memory import SavedTensorCounter

from .build import Trial
from .measure import cuda_allocator_stats, first_step, steady_step

# The backend `compile: true` uses. inductor is what users get from torch.compile; the environment
# variable lets a test on a 2-core CPU use aot_eager (the same graphs, no kernel generation).
COMPILE_BACKEND_ENV = "WTACRS_COMPILE_BACKEND"
COMPILE_WARMUP_MAX = 5  # a step that still compiles after this many is a recompile loop, reported


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def compile_step(trial: Trial, reset: bool = True, mode: str | None = None) -> dict:
    """`model = torch.compile(model)` as users write it (dynamic=False: one graph per batch shape), then
    forward and backward until a step compiles nothing new. The first step compiles; the second may
    recompile for state the first created (the layers' gradient-norm tables, a config field transformers
    sets on its first forward). No optimizer step runs and the gradients are dropped, so the first
    measured step is still one before any optimizer state exists, and it compiles nothing.
    `reset` first drops whatever was compiled before (a trial's rule); a caller keeping several
    trials compiled side by side (benchmarks/step_time.py) passes False. `mode` is torch.compile's
    ("reduce-overhead": CUDA graphs); None leaves it out."""
    backend = os.environ.get(COMPILE_BACKEND_ENV) or "inductor"
    if reset:
        torch._dynamo.reset()  # nothing compiled for an earlier trial is reused (or kept alive) by this one
    before, breaks = compiled_graphs(), graph_breaks()
    trial.compiled = torch.compile(trial.model, backend=backend, dynamic=False, **({"mode": mode} if mode else {}))
    cuda = trial.device.type == "cuda"
    t0 = time.perf_counter()
    steps = 0
    while steps < COMPILE_WARMUP_MAX:
        graphs = compiled_graphs()
        trial.forward_backward()
        trial.model.zero_grad(set_to_none=True)
        steps += 1
        if steps > 1 and compiled_graphs() == graphs:
            break
    if cuda:
        torch.cuda.synchronize()
    graphs = compiled_graphs() - before
    if not graphs:  # Dynamo ran the step eagerly (a recompile limit, a skipped frame): not a compiled step
        raise RuntimeError("torch.compile compiled no graph for this step: Dynamo ran it eagerly")
    return {
        "compiled": True,
        "compile_backend": backend,
        "compile_s": time.perf_counter() - t0,
        "compile_graphs": graphs,
        "compile_graph_breaks": graph_breaks() - breaks,
    }


def measure_compiled_memory(trial: Trial, mode: str) -> dict:
    """`measure.measure_memory` for a compiled step: step 1, then one steady-state step, with no
    dispatch mode. On cpu the peaks are left to the caller's CPUAllocatorRecord."""
    saved = SavedTensorCounter(trial.model)
    cuda = mode == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    first_step(trial, saved)
    out: dict = {"activation_bytes": int(saved.total)}
    if cuda:
        out["first_step_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    steady_step(trial)
    if cuda:
        out.update(peak_bytes=int(torch.cuda.max_memory_allocated()), **cuda_allocator_stats())
    return out
