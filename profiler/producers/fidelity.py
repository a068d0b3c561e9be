"""Gradient fidelity: per replaced layer, the error, bias and variance of a sampled weight gradient
against the exact one; for MEFT, its reconstructed gradients against backprop through the same
model. Real values in every mode (an estimate's spec runs it on the CPU)."""

from __future__ import annotations

import dataclasses
import math

import torch

import wtacrs
from contract.methods import Method
from contract.rows import FidelityRow
from contract.spec import JobSpec

from ..trial.build import build_trial, free_cached, release
from ..trial.mode import device_for

FIDELITY_DRAWS = 8


def _weight_grads(model) -> dict[str, torch.Tensor]:
    return {n: m.weight.grad.detach().double().clone() for n, m in wtacrs.wtacrs_layers(model)}


def fidelity_rows(spec: JobSpec, method: Method, batch_size: int) -> list[FidelityRow]:
    """Per replaced layer: error and variance of the sampled weight gradient vs the exact one."""
    if method.meft:
        return _meft_fidelity_rows(spec, method, batch_size)
    device = device_for(spec)
    # only the sampler goes: every other field of the method (adapter, checkpointing, offload...) stays
    exact_method = dataclasses.replace(method, sampler=None, ratio=None)
    sampled = build_trial(spec, method, batch_size, device)
    reference = build_trial(spec, exact_method, batch_size, device)
    try:
        for t in (sampled, reference):
            t.model.eval()  # dropout off: the exact and sampled runs see the same function
        reference.forward_backward()
        ref_modules = dict(reference.model.named_modules())
        exact = {n: ref_modules[n].weight.grad.detach().double() for n, _ in wtacrs.wtacrs_layers(sampled.model)}
        # one step on another batch first, so the gradient-norm history is what training would have
        warm = {k: v.roll(1, 0) for k, v in sampled.batch.items()}
        with sampled.autocast():
            sampled.model(**warm).loss.backward()
        draws = []
        for _ in range(FIDELITY_DRAWS):
            sampled.model.zero_grad(set_to_none=True)
            sampled.forward_backward()
            draws.append(_weight_grads(sampled.model))
    finally:
        release(sampled)
        release(reference)
        del sampled, reference
        free_cached()
    rows = []
    for name, g in exact.items():
        stack = torch.stack([d[name] for d in draws])
        norm = g.norm().item()
        mean = stack.mean(0)
        # a relative error of a zero gradient (e.g. LoRA's frozen-path layers) is undefined, not 0
        defined = norm > 0 and math.isfinite(norm)
        rows.append(
            FidelityRow(
                method=method.name,
                batch_size=batch_size,
                layer=name,
                relative_error=(stack - g).flatten(1).norm(dim=1).mean().item() / norm if defined else None,
                relative_bias=(mean - g).norm().item() / norm if defined else None,
                relative_variance=((stack - mean) ** 2).sum((1, 2)).mean().item() / norm**2 if defined else None,
                draws=FIDELITY_DRAWS,
                exact_norm=norm if math.isfinite(norm) else None,
            )
        )
    return rows


def _meft_fidelity_rows(spec: JobSpec, method: Method, batch_size: int) -> list[FidelityRow]:
    """MEFT: per trainable parameter (the adapters and the head), the reversible backward's gradient
    against ordinary backprop through the SAME model (same weights, batch, eval mode), so its
    floating-point reconstruction error reads as a gradient error. Deterministic: one draw, no variance."""
    from wtacrs.meft import meft_adapter_names, set_reversible

    device = device_for(spec)
    trial = build_trial(spec, method, batch_size, device)
    try:
        model = trial.model
        model.eval()  # dropout off: both passes compute the same function
        adapters = set(meft_adapter_names(model))
        # the adapters first, then the rest of what trains (the task head)
        names = [n for n, p in model.named_parameters() if p.requires_grad and n in adapters]
        names += [n for n, p in model.named_parameters() if p.requires_grad and n not in adapters]
        params = dict(model.named_parameters())
        step = trial.forward_backward  # bound here: the closure must not name `trial`, deleted below

        def grads() -> dict[str, torch.Tensor | None]:
            model.zero_grad(set_to_none=True)
            step()
            return {n: None if params[n].grad is None else params[n].grad.detach().double().clone() for n in names}

        set_reversible(model, True)
        reversible = grads()
        set_reversible(model, False)
        try:
            exact = grads()
        finally:
            set_reversible(model, True)
    finally:
        release(trial)
        del trial
        free_cached()
    rows = []
    for name in names:
        g, r = exact[name], reversible[name]
        if g is None:
            continue  # no gradient reached it in either pass
        if r is None:
            r = torch.zeros_like(g)
        norm = g.norm().item()
        defined = norm > 0 and math.isfinite(norm)
        err = (r - g).norm().item() / norm if defined else None
        rows.append(
            FidelityRow(
                method=method.name,
                batch_size=batch_size,
                layer=name,
                relative_error=err if err is None or math.isfinite(err) else None,
                relative_bias=err if err is None or math.isfinite(err) else None,  # one deterministic draw
                relative_variance=0.0 if defined else None,
                draws=1,
                exact_norm=norm if math.isfinite(norm) else None,
            )
        )
    return rows
