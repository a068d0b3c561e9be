"""Measuring a built trial: peak memory with a breakdown, and step time.

Memory is measured, never guessed: CUDA allocator statistics on cuda, the CPU allocator's record
(instruments/cpu_allocator.py) on cpu, and a dispatcher-level storage count under FakeTensorMode
on estimate. The breakdown always comes from the storage tracker (same method in every mode),
taken at the tracker's peak, with what the reported peak holds beyond it in `other` (`reconcile`).
Gradient fidelity is a producer of its own (producers/fidelity.py).
"""

from __future__ import annotations

import functools
import os
import statistics
import time

import torch

from contract.spec import JobSpec
from wtacrs.memory import SavedTensorCounter

from ..instruments import second_step
from ..instruments.cpu_allocator import FIRST_STEP, STEADY
from ..instruments.replay import EventLog
from ..instruments.tracker import StorageTracker
from .build import Trial


def first_step(trial: Trial, saved: SavedTensorCounter) -> None:
    """Step 1, before the optimizer has state: `saved` counts the activations it keeps."""
    with torch.profiler.record_function(FIRST_STEP):
        trial.forward_backward(saved)


def steady_step(trial: Trial) -> None:
    """The optimizer's first step (its state is made), a step, and the optimizer again."""
    with torch.profiler.record_function(STEADY):
        trial.optimizer_step()
        trial.forward_backward()
        trial.optimizer_step()


# "traced": an estimate traces step 2's forward and backward too, as before it was written from step 1's
SECOND_STEP_ENV = "WTACRS_SECOND_STEP"


def second_step_written(trial: Trial, tracker: StorageTracker, fixed: int) -> EventLog | None:
    """The steady step of an estimate without tracing step 2's forward and backward: the optimizer
    steps twice on step 1's gradients, they go, and the event log gets step 1's forward and backward
    written in where step 2's would be (instruments/second_step.py), which it returns. Where step 1's
    cannot stand for step 2's, it traces a forward, backward and optimizer step after all (a steady
    step like step 2: the optimizer's state exists) and returns None; the tracker then holds the peak."""
    optimizer = tracker.position
    trial.optimizer.step()
    second = tracker.position
    trial.optimizer.step()
    zero = tracker.position
    trial.optimizer.zero_grad(set_to_none=True)
    log = tracker.event_log(fixed, rewrite=functools.partial(second_step.repeat, marks=(optimizer, second, zero)))
    if log is None:
        trial.forward_backward()
        trial.optimizer_step()
    return log


CUDA_BLOCK = 512  # the CUDA caching allocator hands out multiples of 512 bytes


def measure_memory(
    trial: Trial,
    mode: str,
    tracker: StorageTracker | None = None,
    saved: SavedTensorCounter | None = None,
    record: bool = False,
) -> dict:
    """Step 1 (before optimizer state exists), then one steady-state step.

    Peaks are the CUDA allocator's on cuda and the storage tracker's otherwise; on cpu the caller
    replaces them with a CPUAllocatorRecord's, which has to span the trial's construction too, and
    calls `reconcile` again. An estimate of a CUDA device counts storages in the allocator's block
    sizes, plus the cuBLAS workspaces a real device holds from its first matmul on. `tracker` and
    `saved` replace the default tracker and saved-tensor counter (producers/sharding.py passes
    sharding-aware ones). `record`: the default tracker keeps an event log of its counting; a tracker
    that keeps one (the default with `record`, or one passed in recording) returns it as "event_log"
    (instruments/replay.py, its batch size 0), which the caller takes out of the row and labels with
    its batch size (producers/base.take_log). Each breakdown is the tracker's composition at its own peak, the part of
    the reported peak the tracker does not see (workspaces; on cuda and cpu what kernels allocate
    inside themselves) in `other` and in untracked_bytes, so that it sums to the peak (`reconcile`).
    """
    # An estimate of a CUDA device writes step 2 from step 1, with its own tracker (a sharded one's
    # ranks are not checked to repeat). Not of the CPU: WTA-CRS layers sharing a sample (q, k, v)
    # learn their partners in step 1, and from step 2 on the CPU's reference code computes each
    # partner's gradient factor in ops of its own, which the CUDA kernel takes in (second_step.py).
    write_second = tracker is None and trial.kernels is not None and os.environ.get(SECOND_STEP_ENV) != "traced"
    if tracker is None:
        record = record or write_second
        if trial.kernels:
            tracker = StorageTracker(block=trial.kernels.round_bytes, record=record)
        elif mode == "cuda":  # what the CUDA allocator counts: its blocks, on the device only
            tracker = StorageTracker(block=CUDA_BLOCK, device_type="cuda", record=record)
        else:
            tracker = StorageTracker(record=record)
    fixed = trial.kernels.workspace_bytes if trial.kernels else 0
    # the counter's saved-tensor hook shadows the tracker's while it is active: it forwards to it
    if saved is None:
        saved = SavedTensorCounter(trial.model, on_pack=tracker.saved)
    cuda = mode == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    with tracker.watch(trial.model, trial.optimizer):
        tracker.reset_peak()
        first_step(trial, saved)
        tracker.step_ended()
        first_peak = torch.cuda.max_memory_allocated() if cuda else tracker.peak + fixed
        first_breakdown = tracker.peak_breakdown()
        log = second_step_written(trial, tracker, fixed) if write_second else None
        if log is None:
            if not write_second:
                steady_step(trial)
            peak = torch.cuda.max_memory_allocated() if cuda else tracker.peak + fixed
            tracked, breakdown = tracker.peak, tracker.peak_breakdown()
            log = tracker.event_log(fixed)  # None unless the tracker recorded
        else:
            steady = log.replay()
            peak, tracked, breakdown = steady.peak, steady.peak - fixed, steady.breakdown
    out = {
        "peak_bytes": int(peak),
        "first_step_peak_bytes": int(first_peak),
        "activation_bytes": int(saved.total),
        "tracked_peak_bytes": int(tracked),
        "breakdown": breakdown,
        "first_step_breakdown": first_breakdown,
        "optimizer": trial.optimizer_name,
        "optimizer_impl": trial.optimizer_impl,
    }
    if trial.kernels:
        out["workspace_bytes"] = fixed  # in the peaks, and in the breakdowns' `other`
    if log is not None:
        out["event_log"] = log
    if cuda:
        out.update(cuda_allocator_stats())
    reconcile(out)
    return out


_PEAKS = (
    ("breakdown", "peak_bytes", "untracked_bytes"),
    ("first_step_breakdown", "first_step_peak_bytes", "first_step_untracked_bytes"),
)


def reconcile(row: dict) -> dict:
    """Make each breakdown sum to its peak, to the byte, once the row's peaks are final.

    A breakdown is the tracker's composition at the tracker's peak. What the reported peak holds
    beyond it is untracked: the cuBLAS workspaces of an estimate (exactly workspace_bytes, since an
    estimate's peak is the tracker's plus them), and on cuda/cpu what the allocator counted that no
    op handed to the dispatcher (kernels' internal scratch, the workspaces) plus any difference in
    when the two peaks fell. It goes into `other` and is named in untracked_bytes (negative where
    the allocator's peak is below the tracker's; in cpu and estimate runs of the tests it never is).
    Idempotent: call it again after a peak changes.
    """
    for breakdown_key, peak_key, untracked_key in _PEAKS:
        breakdown, peak = row.get(breakdown_key), row.get(peak_key)
        if breakdown is None or peak is None:
            continue
        before = row.get(untracked_key) or 0
        tracked_other = breakdown["other"] - before
        untracked = int(peak) - (sum(breakdown.values()) - before)
        # a category is never negative (rows refuse it): should the allocator peak below the tracker
        # by more than the tracker's `other`, that breakdown sums to more than its peak
        breakdown["other"] = max(tracked_other + untracked, 0)
        row[untracked_key] = untracked
    return row


def cuda_allocator_stats() -> dict:
    """What the CUDA caching allocator says about the trial beyond its allocated peak."""
    stats = torch.cuda.memory_stats()
    return {
        "reserved_bytes": int(torch.cuda.max_memory_reserved()),
        "alloc_retries": int(stats.get("num_alloc_retries", 0)),
        "allocator_ooms": int(stats.get("num_ooms", 0)),
    }


def measure_throughput(trial: Trial, spec: JobSpec, tokens: int, samples: int) -> dict:
    cuda = trial.device.type == "cuda"

    def step():
        trial.forward_backward()
        trial.optimizer_step()

    for _ in range(spec.warmup):
        step()
    times = []
    for _ in range(spec.steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "step_time_s": median,
        "step_time_min_s": min(times),
        "step_time_max_s": max(times),
        "tokens_per_s": tokens / median,
        "samples_per_s": samples / median,
        "timed_steps": len(times),
    }
