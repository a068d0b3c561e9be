"""Where saved memory goes (the `memory_attribution` measurement): the bytes a first training step
keeps for backward, by module and op, counted by instruments/saved_by.py."""

from __future__ import annotations

import torch

from contract.methods import parse_method

from ..instruments.saved_by import TOP_MODULES, AttributingCounter, summarise
from ..instruments.tracker import StorageTracker
from ..trial.mode import trial_in_mode


def attribute(trial, mode: str, method: str = "", top: int = TOP_MODULES) -> dict:
    """One first training step of `trial` (a `trial.build.Trial`), its saved bytes by module and op.

    `mode` is the trial's: "cuda", "cpu" or "estimate" (then build the trial under FakeTensorMode
    and call this inside it; `trial.kernels` says which CUDA device's kernels the trace follows and
    its allocator block, which the bytes are rounded to). Returns a JSON-serialisable dict:
    method, batch_size, mode, [estimate_device], total_bytes (sum over modules, rounded to
    block_bytes), raw_bytes (the same storages unrounded: the trial row's activation_bytes),
    peak_activation_bytes (those of them still alive at the step's peak: the breakdown's
    activations), modules (the `top` largest, then an "(other)" entry; each with module path,
    type, bytes, ops {op: bytes}), module_count, ops {op: bytes}, and groups (module paths with
    layer indices folded, e.g. encoder.block.*.layer.0.SelfAttention).
    The step leaves gradients behind, as `forward_backward` does; the optimizer does not step.
    """
    block = trial.kernels.round_bytes if trial.kernels else 1
    tracker = StorageTracker(block=block)
    counter = AttributingCounter(trial.model, on_pack=tracker.saved)
    with tracker.watch(trial.model, trial.optimizer):
        tracker.reset_peak()
        trial.forward_backward(counter)
    out = {
        "method": method,
        "batch_size": _batch_size(trial.batch),
        "mode": mode,
    }
    if trial.kernels:
        out["estimate_device"] = trial.kernels.name
    out.update(summarise(counter.records, trial.model, block, top))
    out["peak_activation_bytes"] = tracker.peak_breakdown()["activations"]
    return out


def _batch_size(batch: dict) -> int | None:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.dim():
            return int(v.shape[0])
    return None


def attribute_spec(spec, method: str, batch_size: int) -> dict:
    """`attribute` for one (method, batch size) of a JobSpec, in the spec's device mode (on cpu
    without the CPU allocator's record: no allocator peak is read)."""
    with trial_in_mode(spec, parse_method(method), batch_size, record=False) as run:
        return attribute(run.trial, spec.device, method)
