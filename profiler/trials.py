"""Rows of a job: per (method, batch) trials, the max-batch search, fidelity. Runs in one process."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch

import wtacrs
from contract.methods import Method
from contract.rows import FidelityRow, MaxBatchRow, Probe, TrialRow
from contract.spec import JobSpec

from .compiled import compile_step, compiled_graphs, measure_compiled_memory
from .cuda_model import SM90
from .environment import process_device_bytes
from .maxbatch import search
from .measure import (
    FIRST_STEP,
    CPUAllocatorRecord,
    build_trial,
    free_cached,
    measure_memory,
    measure_throughput,
    optimizer_impl,
    reconcile,
    release,
)

GIB = 2**30
FIDELITY_DRAWS = 8


def is_oom(err: BaseException) -> bool:
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def device_for(spec: JobSpec) -> torch.device:
    if spec.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device on this host")
        if spec.dtype in ("bf16", "bf16-weights") and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(0)
            raise RuntimeError(
                f"dtype {spec.dtype!r} needs a GPU with bf16 (Ampere or newer); {name} has none: use fp16 or fp32"
            )
        return torch.device("cuda")
    return torch.device("cpu")


def _mode_context(spec: JobSpec):
    if spec.device == "cpu":
        return CPUAllocatorRecord()
    if spec.device == "cuda":
        return contextlib.nullcontext()
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def memory_limit(spec: JobSpec) -> float | None:
    """Bytes a batch may peak at, headroom applied (None: the device decides, by OOM)."""
    if spec.target_memory_gb is not None:
        return spec.target_memory_gb * GIB * (1 - spec.max_batch.headroom)
    if spec.device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory * (1 - spec.max_batch.headroom)
    return None


def base_row(spec: JobSpec, method: Method, batch_size: int) -> dict:
    """What every trial row of (method, batch size) starts from, on one device or per rank."""
    row = {
        "method": method.name,
        "batch_size": batch_size,
        "seq_len": spec.seq_len,
        "mode": spec.device,
        "measured": spec.device != "estimate",
        "oom": False,
        "error": None,
        "compiled": spec.compile,
        "optimizer": spec.optimizer,
        "optimizer_impl": optimizer_impl(spec),
    }
    if spec.parallel.strategy != "none":
        row.update(strategy=spec.parallel.strategy, world_size=spec.parallel.world_size)
    return row


def _host_bytes(spec: JobSpec, trial) -> int | None:
    """Offloading: what the measured steps kept in host memory (the README's *Methods*: on cpu the
    saved tensors are host memory already, nothing moves, 0; the estimate models the copy out)."""
    if spec.device == "cpu":
        return 0
    from wtacrs.offload import offload_stats

    stats = offload_stats(trial.model)
    return None if stats is None else int(stats["host_bytes"])


def trial_row(spec: JobSpec, method: Method, batch_size: int, throughput: bool = True) -> TrialRow:
    if spec.parallel.strategy != "none":  # DDP/FSDP: per rank, in profiler/parallel.py
        from .parallel import parallel_trial_row

        return parallel_trial_row(spec, method, batch_size, throughput)
    row = base_row(spec, method, batch_size)
    kernels = None
    if spec.device == "estimate":
        row["estimate_device"] = spec.estimate_device
        kernels = SM90 if spec.estimate_device == SM90.name else None
    trial = None
    try:
        with _mode_context(spec) as context:
            fake_mode = context if spec.device == "estimate" else None
            trial = build_trial(spec, method, batch_size, device_for(spec), fake_mode, kernels)
            if not spec.compile:
                row.update(measure_memory(trial, spec.device))
        built = context
        if spec.compile:  # cpu or cuda (the spec refuses estimate)
            # compiled in warm-up steps before anything is measured (compiled.compile_step), outside
            # the CPU record: profiling every op Dynamo traces would slow compiling severalfold
            row.update(compile_step(trial))
            free_cached(drop_compiled=False)  # what warm-up left cached is no floor under the peaks
            graphs = compiled_graphs()
            with _mode_context(spec) as context:  # no storage tracker: it would make the step eager
                row.update(measure_compiled_memory(trial, spec.device))
        if method.offload:
            row["host_bytes"] = _host_bytes(spec, trial)
        if isinstance(context, CPUAllocatorRecord):  # the allocator's own count, not the tracker's
            # above what was allocated before the model was built; compiled, the measured steps'
            # peak (eager, the whole run's, which is the steps' too: building never holds more)
            row["first_step_peak_bytes"] = context.peak(FIRST_STEP, since=built)
            row["peak_bytes"] = context.peak(since=built)
            reconcile(row)  # the breakdowns sum to these peaks
        limit = memory_limit(spec)
        if spec.device == "estimate" and limit is not None:
            row["oom"] = row["peak_bytes"] > limit  # would not fit the target device
        if spec.device == "cuda":
            row["process_device_bytes"] = process_device_bytes()
        if throughput and spec.device != "estimate" and "throughput" in spec.measurements:
            tokens = batch_size * spec.seq_len
            row.update(measure_throughput(trial, spec, tokens, batch_size))
        if spec.compile:
            row["recompiles_measured"] = compiled_graphs() - graphs
    except Exception as err:  # an OOM is a measurement; anything else is this row's error
        if is_oom(err):
            row["oom"] = True
            row["oom_message"] = str(err).split("\n")[0][:300]
        else:
            row["error"] = f"{type(err).__name__}: {err}"
    # Only here, with the exception and its traceback gone (their frames hold the step's tensors),
    # is the failed trial unreachable: freeing it inside `except` would leave its blocks cached
    # and every later probe of a max-batch search would fail for memory a dead trial holds.
    # free_cached also drops what was compiled for it (Dynamo's caches hold the compiled model).
    release(trial)
    del trial
    free_cached()
    return TrialRow.model_validate(row)


def max_batch_row(spec: JobSpec, method: Method) -> MaxBatchRow:
    limit = memory_limit(spec)

    def probe(b: int) -> Probe:
        row = trial_row(spec, method, b, throughput=False)
        if row.error:
            raise RuntimeError(row.error)
        peak = row.reserved_bytes if row.reserved_bytes is not None else row.peak_bytes
        if row.oom and spec.device != "estimate":
            return Probe(batch_size=b, fits=False, peak_bytes=None, reason=f"out of memory: {row.oom_message}")
        fits = limit is None or peak <= limit
        return Probe(batch_size=b, fits=fits, peak_bytes=peak, reason="" if fits else "over the memory limit")

    result = search(probe, limit, spec.max_batch.upper)
    return MaxBatchRow(
        method=method.name,
        max_batch_size=result.max_batch_size,
        mode=spec.device,
        seq_len=spec.seq_len,
        limit_bytes=limit,
        headroom=spec.max_batch.headroom,
        capped_at_upper=result.capped,
        probes=result.probes,
    )


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
