"""DDP and FSDP as one rank sees them: the process group, wrapping a trial's model, and the
storage tracker and saved-tensor counter that count a rank's shards (parallel.py and ranks.py use them).

Sharding and collectives are PyTorch's own (`fully_shard`, `DistributedDataParallel`); nothing here
simulates them. The method (LoRA, WTA-CRS, checkpointing) is applied first, then FSDP2 shards each
transformer block and the root, or DDP wraps the model (gradient_as_bucket_view: the gradients live
in the reducer's buckets, as large-model DDP is run).

- estimate: one process traces rank 0 of `world_size` under FakeTensorMode with PyTorch's fake
  process group (collectives return at once, tensors have no values), so its sharded parameters,
  gradients and optimizer state, FSDP's all-gather and reduce-scatter buffers and DDP's buckets are
  counted as that rank allocates them. Rank 0 holds the largest shard (FSDP pads the last ones).
- cpu / cuda (`ranks.py`): `world_size` processes (gloo on 127.0.0.1, or NCCL with one GPU per rank), each
  building the same seeded model and measuring its own peak as the one-device path does (the CPU
  allocator's record, or CUDA's statistics) and its step time; the row holds the max over ranks.

What the trace does not see on a GPU: FSDP2 issues all-gathers on a side stream, and the CUDA
caching allocator keeps a block until the stream that used it is done, so a real rank may hold one
block's all-gather output more than the single-stream trace at forward's peak.
"""

from __future__ import annotations

import contextlib
import inspect

import torch

from contract.spec import JobSpec
from wtacrs.memory import SavedTensorCounter

from ..instruments.tracker import StorageTracker
from ..trial.build import Trial, make_optimizer
from ..trial.measure import measure_memory


def distributed():
    """torch.distributed and FSDP2, with a clear error where this torch build lacks them."""
    try:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    except ImportError as err:  # FSDP2 is public API from torch 2.6 on
        raise RuntimeError(f"parallel strategies need torch.distributed with FSDP2 (fully_shard): {err}") from None
    if not dist.is_available():
        raise RuntimeError("parallel strategies need torch.distributed, which this torch build lacks")
    return dist, init_device_mesh, FSDPModule, MixedPrecisionPolicy, fully_shard


@contextlib.contextmanager
def fake_process_group(world_size: int):
    """PyTorch's fake process group as rank 0 of `world_size` (no communication, no other process)."""
    dist, init_device_mesh, *_ = distributed()
    try:  # private, in torch 2.11-2.13 alike: importing it registers the "fake" backend
        from torch.testing._internal.distributed.fake_pg import FakeStore
    except ImportError as err:
        raise RuntimeError(f"estimating a parallel trial needs torch's fake process group: {err}") from None
    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised in this process; estimate in a fresh one")
    dist.init_process_group(backend="fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield init_device_mesh("cpu", (world_size,))
    finally:
        dist.destroy_process_group()


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks: the items of the model's layer lists (nn.ModuleList), outermost only
    (a T5 block's own list of sub-layers stays in its block)."""
    modules = dict(model.named_modules())
    found: list[str] = []
    for name in modules:
        parent = modules.get(name.rpartition(".")[0]) if name else None
        if isinstance(parent, torch.nn.ModuleList) and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    return [modules[name] for name in found]


def wrap(model: torch.nn.Module, spec: JobSpec, device: torch.device, mesh, traced: bool = False) -> torch.nn.Module:
    """The model under the spec's strategy: fully_shard per block then the root, or DDP. DDP skips
    its start-up check and broadcast (init_sync=False): every rank builds the same model from the
    same seed, so the broadcast changes nothing, and its flat copy of every parameter is let go by the
    backend's worker thread when that thread gets to it (gloo once held it into a measured first step:
    +1 parameter set). A trace could not run it anyway (C++ reads tensor data, which fake tensors lack)."""
    p = spec.parallel
    if p.strategy == "fsdp":
        _, _, _, MixedPrecisionPolicy, fully_shard = distributed()
        policy = MixedPrecisionPolicy()
        if p.mixed_precision == "bf16":
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        options = {"mesh": mesh, "mp_policy": policy}
        if p.reshard_after_forward is not None:
            options["reshard_after_forward"] = p.reshard_after_forward
        for block in reversed(blocks(model)):  # inner lists first: an outer shard excludes them
            fully_shard(block, **options)
        fully_shard(model, **options)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    if "init_sync" not in inspect.signature(DistributedDataParallel).parameters:
        raise RuntimeError(
            f"DDP trials need DistributedDataParallel(init_sync=...), which torch {torch.__version__} lacks"
        )
    ddp = DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True, init_sync=False)
    if traced:  # the fake group's all-reduce has no result; PyTorch's no-op hook reduces in place as it would
        from torch.distributed.algorithms.ddp_comm_hooks.debugging_hooks import noop_hook

        ddp.register_comm_hook(None, noop_hook)
        ddp.reducer = _KeepBuckets(ddp.reducer)
    return ddp


class _KeepBuckets:
    """DDP's reducer in a trace, less the bucket rebuild before the second step: it broadcasts the
    bucket order and C++ reads it back, which a fake tensor cannot give. The rebuilt buckets hold
    the same gradients (so the same bytes) in another order, made between steps."""

    def __init__(self, reducer):
        self._reducer = reducer

    def __getattr__(self, name):
        return getattr(self._reducer, name)

    def _rebuild_buckets(self) -> bool:
        return False


class RankTracker(StorageTracker):
    """The storage tracker as one rank sees its memory: a DTensor counts as its local shard; a
    storage FSDP frees and re-allocates in place (UntypedStorage.resize_, which is no op the
    dispatcher sees) counts at its current size; unsharded parameters are parameters, and gradients
    are classified whether or not the wrapper runs post-accumulate hooks."""

    def track(self, t):
        from torch.utils._python_dispatch import is_traceable_wrapper_subclass

        if isinstance(t, torch.Tensor) and is_traceable_wrapper_subclass(t):
            idents = [self.track(getattr(t, name)) for name in t.__tensor_flatten__()[0]]
            return next((i for i in idents if i is not None), None)
        return super().track(t)

    def _resized(self, storage) -> None:
        self.resized(storage._cdata, storage.nbytes())

    @contextlib.contextmanager
    def resizes(self):
        original = torch.UntypedStorage.resize_

        def resize_(storage, size):
            out = original(storage, size)
            self._resized(storage)
            return out

        torch.UntypedStorage.resize_ = resize_
        try:
            yield
        finally:
            torch.UntypedStorage.resize_ = original

    @contextlib.contextmanager
    def watch(self, model, optimizer):
        *_, FSDPModule, _, _ = distributed()
        self._params = list(model.parameters())

        def unsharded(module, args):  # runs after FSDP's own pre-forward hook (prepended), so unsharded
            self.mark(list(module.parameters()), "parameters")

        hooks = [m.register_forward_pre_hook(unsharded) for m in model.modules() if isinstance(m, FSDPModule)]
        hooks.append(optimizer.register_step_pre_hook(lambda opt, a, k: self._mark_grads()))
        try:
            with self.resizes(), super().watch(model, optimizer):
                yield self
        finally:
            for h in hooks:
                h.remove()

    def _mark_grads(self) -> None:
        self.mark([p.grad for p in self._params if p.grad is not None], "gradients")

    def peak_breakdown(self) -> dict[str, int]:
        self._mark_grads()
        return super().peak_breakdown()


class RankSavedCounter(SavedTensorCounter):
    """Saved tensors, less the unsharded parameters FSDP's blocks save (parameters, not activations)."""

    def __init__(self, model, tracker: RankTracker):
        super().__init__(model, on_pack=tracker.saved)
        self.tracker = tracker

    def _pack(self, t):
        ident = self.tracker.track(t)
        if ident is not None and self.tracker.kind.get(ident) == "parameters":
            return t
        return super()._pack(t)


def sharded_trial(spec: JobSpec, trial: Trial, device, mesh, tracker: RankTracker, mode: str) -> dict:
    """Wrap the trial's model (the tracker counting what wrapping allocates), then measure_memory."""
    with tracker, tracker.resizes():
        trial.model = wrap(trial.model, spec, device, mesh, traced=trial.traced)
    trial.optimizer = make_optimizer(spec, trial.model)  # over the shards; the old one held full tensors
    return measure_memory(trial, mode, tracker, RankSavedCounter(trial.model, tracker))
