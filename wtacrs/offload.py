"""What training frameworks offer against activation memory, as baselines beside WTA-CRS and MEFT.

- `apply_offload(model)`: every tensor autograd saves during the model's forward is copied to
  pinned host memory and copied back when backward needs it (torch's `save_on_cpu`, plus: a
  tensor saved by several ops, e.g. the input of q, k and v, is copied once, and weights, which
  stay resident anyway, are not copied). Exact. On a CUDA
  device the device keeps none of them; `offload_stats(model)` reports the host bytes. On the CPU
  the saved tensors already live in host memory: nothing is moved, and the row measures what full
  fine-tuning keeps (with `host_bytes` saying how much of it is "offloaded"). Under FakeTensorMode
  (the profiler's estimate of a CUDA device) the host copy is a meta tensor, so the device count
  drops it and the copy back in backward is a new device allocation, as on the device.
- `selective_checkpoint_policy` / `selective_checkpoint_context`: selective activation
  checkpointing (torch's SAC): in each checkpointed layer the matmul and attention outputs are
  kept, everything else (pointwise ops, norms, dropout, softmax) is recomputed in backward. Exact.

Saved-tensor hooks do not nest (the innermost pair alone runs), so each captures the hooks outside
it (the profiler's saved-activation counter) and calls their pack on what stays in device memory:
SAC's kept matmul outputs, offloading's tensors only where nothing is moved (CPU). What offloading
moved is no device activation; `offload_stats` reports it (host bytes).
"""

from __future__ import annotations

import functools
import weakref

import torch
from torch import nn

_aten = torch.ops.aten
# The ops whose outputs selective checkpointing keeps: matmuls and fused attention.
MATMUL_OPS = {
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten.baddbmm.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._efficient_attention_forward.default,
    _aten._flash_attention_forward.default,
}
if hasattr(_aten, "_scaled_dot_product_cudnn_attention"):
    MATMUL_OPS.add(_aten._scaled_dot_product_cudnn_attention.default)
_WTACRS_KEEP = ("linear", "memeff_attention")  # wtacrs custom ops, when dispatched whole


def _outer_hooks():
    return torch._C._autograd._top_saved_tensors_default_hooks(False)


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


class _Offloader:
    """The saved-tensor hooks of one model, and what they moved."""

    def __init__(self, pin: bool = True):
        self.pin = pin
        self.host_bytes = 0  # bytes copied to the host by the last forward
        self.tensors = 0
        self._cache: dict[int, tuple] = {}
        self._params: set[int] = set()
        self._ctx = None
        self._outer = None

    def _pack(self, t: torch.Tensor):
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return ("keep", t)
        if t.untyped_storage()._cdata in self._params:
            return ("keep", t)  # a weight (or a view of one): resident anyway, nothing to move
        hit = self._cache.get(id(t))
        if hit is not None and hit[0]() is t:
            return hit[1]
        nbytes = t.numel() * t.element_size()
        if t.device.type == "cpu" and not _is_fake(t):
            # already in host memory: nothing to move, and it stays a saved activation there, so
            # the counters outside (the profiler's) see it as such
            if self._outer is not None:
                self._outer[0](t)
            packed = ("keep", t)
        elif _is_fake(t):
            packed = ("fake", t.device, torch.empty_like(t, device="meta"))
        else:
            host = torch.empty(t.size(), dtype=t.dtype, layout=t.layout, pin_memory=self.pin)
            host.copy_(t, non_blocking=self.pin)
            packed = ("host", t.device, host)
        self.host_bytes += nbytes
        self.tensors += 1
        try:
            self._cache[id(t)] = (weakref.ref(t), packed)
        except TypeError:
            pass
        return packed

    def _unpack(self, packed):
        kind = packed[0]
        if kind == "keep":
            return packed[1]
        device, value = packed[1], packed[2]
        if kind == "fake":
            return torch.empty(value.size(), dtype=value.dtype, device=device)
        return value.to(device, non_blocking=self.pin)

    def enter(self, module, *_):
        if self._ctx is not None:  # re-entrant forward (a nested call of the same model)
            return
        self._cache.clear()
        self._params = {p.untyped_storage()._cdata for p in module.parameters()}
        self.host_bytes = self.tensors = 0
        self._outer = _outer_hooks()
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()

    def exit(self, *_):
        if self._ctx is None:
            return
        ctx, self._ctx = self._ctx, None
        ctx.__exit__(None, None, None)
        self._cache.clear()  # the packed copies live on in the autograd graph only
        self._params = set()


def apply_offload(model: nn.Module, pin_memory: bool | None = None) -> nn.Module:
    """Offload what the model's forward saves for backward to (pinned) host memory; in place.
    Apply it last (after peft, WTA-CRS): its hooks must be the model's outermost call."""
    if getattr(model, "_wtacrs_offload", None) is not None:
        raise ValueError("activation offloading is already applied to this model")
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    off = _Offloader(pin)
    handles = [
        model.register_forward_pre_hook(off.enter),
        model.register_forward_hook(off.exit, always_call=True),
    ]
    object.__setattr__(model, "_wtacrs_offload", (off, handles))
    return model


def remove_offload(model: nn.Module) -> None:
    off, handles = model.__dict__.pop("_wtacrs_offload")
    for h in handles:
        h.remove()


def offload_stats(model: nn.Module) -> dict | None:
    """{'host_bytes', 'tensors'} moved by the last forward, or None without offloading."""
    found = getattr(model, "_wtacrs_offload", None)
    if found is None:
        base = getattr(model, "base_model", None)
        found = getattr(base, "_wtacrs_offload", None) if base is not None else None
    if found is None:
        return None
    return {"host_bytes": found[0].host_bytes, "tensors": found[0].tensors}


def _keeps(func) -> bool:
    if func in MATMUL_OPS:
        return True
    name = getattr(func, "name", lambda: "")()
    return name.startswith("wtacrs::") and name.split("::")[1].split(".")[0] in _WTACRS_KEEP


def selective_checkpoint_policy(ctx, func, *args, outer=None, **kwargs):
    """Keep matmul/attention outputs (MUST_SAVE), recompute the rest (PREFER_RECOMPUTE). With
    `outer` (saved-tensor hooks outside the checkpoint), report each kept output to its pack."""
    from torch.utils.checkpoint import CheckpointPolicy

    if _keeps(func):
        out = getattr(ctx, "op_output", None)
        if outer is not None and out is not None and not ctx.is_recompute:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    outer[0](t)
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def selective_checkpoint_context():
    """A `context_fn` for `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`."""
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    policy = functools.partial(selective_checkpoint_policy, outer=_outer_hooks())
    return create_selective_checkpoint_contexts(policy)
