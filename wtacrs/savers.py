"""Companion memory savers: the operators around the linear layers that would otherwise keep
full activations alive and erase WTA-CRS's saving (see the breakdown in benchmarks/RESULTS.md).

Each one computes exactly what the module it replaces computes in forward; what changes is what
it keeps for backward, always through `save_for_backward` so memory accounting sees it.

On CUDA tensors the bit-mask ops run one Triton kernel each (`wtacrs.kernels.bits`: the mask
made, applied and packed in one pass; `WTACRS_TRITON=0` turns them off), the reference below
everywhere else. The packing layout is `pack_bits`'s in both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels, row_sources
from .dispatch import call, register_autograd, register_cuda

_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def pack_bits(mask: Tensor) -> Tensor:
    """bool tensor -> uint8 [ceil(numel / 8)], 8 flags a byte."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=mask.device)
    return (flat.view(-1, 8).to(torch.uint8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape: torch.Size) -> Tensor:
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) >> shifts) & 1
    n = shape.numel()
    return bits.reshape(-1)[:n].view(shape).bool()


@torch.library.custom_op("wtacrs::bit_dropout", mutates_args=())
def bit_dropout(x: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """Dropout with its keep mask packed 8 to a byte: (y, bits)."""
    keep = torch.rand_like(x, dtype=torch.float32) >= p
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p)), pack_bits(keep)


@register_cuda(bit_dropout)
def _(x, p):
    if kernels.use_triton(x) and x.is_contiguous():

        def fused():
            from .kernels import bits

            # Philox keyed by a seed drawn from torch's CUDA generator, on the device: no host
            # sync, reproducible under torch.manual_seed (another stream than torch.rand_like's)
            seed = torch.randint(0, 2**62, (1,), device=x.device, dtype=torch.int64)
            return bits.dropout(x, p, seed)

        return kernels.run("wtacrs::bit_dropout", fused, lambda: bit_dropout._init_fn(x, p))
    return bit_dropout._init_fn(x, p)


@bit_dropout.register_fake
def _(x, p):
    return torch.empty_like(x), x.new_empty(-(-x.numel() // 8), dtype=torch.uint8)


@torch.library.custom_op("wtacrs::bit_relu", mutates_args=())
def bit_relu(x: Tensor) -> tuple[Tensor, Tensor]:
    """ReLU with its mask (y > 0) packed 8 to a byte: (y, bits)."""
    y = torch.relu(x)
    return y, pack_bits(y > 0)


@register_cuda(bit_relu)
def _(x):
    if kernels.use_triton(x) and x.is_contiguous():

        def fused():
            from .kernels import bits

            return bits.relu(x)

        return kernels.run("wtacrs::bit_relu", fused, lambda: bit_relu._init_fn(x))
    return bit_relu._init_fn(x)


@bit_relu.register_fake
def _(x):
    return torch.empty_like(x), x.new_empty(-(-x.numel() // 8), dtype=torch.uint8)


@torch.library.custom_op("wtacrs::masked_grad", mutates_args=())
def masked_grad(grad: Tensor, bits: Tensor, scale: float) -> Tensor:
    """The backward of both: grad * mask * scale, the mask unpacked from `bits`."""
    return grad * unpack_bits(bits, grad.shape).to(grad.dtype) * scale


@register_cuda(masked_grad)
def _(grad, bits, scale):
    if kernels.use_triton(grad, bits) and grad.is_contiguous() and bits.is_contiguous():

        def fused():
            from .kernels import bits as bit_kernels

            return bit_kernels.masked_grad(grad, bits, scale)

        return kernels.run("wtacrs::masked_grad", fused, lambda: masked_grad._init_fn(grad, bits, scale))
    return masked_grad._init_fn(grad, bits, scale)


@masked_grad.register_fake
def _(grad, bits, scale):
    return torch.empty_like(grad)


def _setup_masked(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zeros for the bits' gradient
    ctx.scale = 1.0 / (1.0 - inputs[1]) if len(inputs) > 1 else 1.0
    ctx.save_for_backward(output[1])


def _dropout_backward(ctx, grad, _bits_grad):
    (bits,) = ctx.saved_tensors
    return (None if grad is None else call(masked_grad, grad, bits, ctx.scale)), None


def _relu_backward(ctx, grad, _bits_grad):
    (bits,) = ctx.saved_tensors
    return None if grad is None else call(masked_grad, grad, bits, 1.0)


register_autograd(bit_dropout, _dropout_backward, _setup_masked)
register_autograd(bit_relu, _relu_backward, _setup_masked)


class BitDropout(nn.Dropout):
    """nn.Dropout that keeps its mask as bits (1/32 of an fp32 activation, 1/8 of a bool mask)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or not torch.is_grad_enabled() or not x.requires_grad:
            return super().forward(x)
        if self.p >= 1.0:
            return x * 0.0
        return row_sources.attributable(call(bit_dropout, x, float(self.p))[0])  # the next layer's sample


class BitReLU(nn.ReLU):
    """ReLU that keeps its mask as bits instead of its whole output."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled() or not x.requires_grad:
            return torch.relu(x)
        return row_sources.attributable(call(bit_relu, x)[0])


_COMPACT_MAX = 1.0e4  # the derivatives are flat long before this, so clamping loses nothing


def _act_forward(kind: str, approximate: str, z: Tensor) -> Tensor:
    return F.silu(z) if kind == "silu" else F.gelu(z, approximate=approximate)


@torch.library.custom_op("wtacrs::compact_act", mutates_args=())
def compact_act(z: Tensor, kind: str, approximate: str, store_dtype: torch.dtype | None) -> tuple[Tensor, Tensor]:
    """(GELU/SiLU of z, z clamped and cast to `store_dtype` for backward); with no store_dtype the
    second is empty and backward keeps z itself (an op's output may not alias its input)."""
    kept = z.clamp(-_COMPACT_MAX, _COMPACT_MAX).to(store_dtype) if store_dtype is not None else z.new_empty(0)
    return _act_forward(kind, approximate, z), kept


@compact_act.register_fake
def _(z, kind, approximate, store_dtype):
    kept = z.new_empty(z.shape, dtype=store_dtype) if store_dtype is not None else z.new_empty(0)
    return torch.empty_like(z), kept


@torch.library.custom_op("wtacrs::compact_act_backward", mutates_args=())
def compact_act_backward(grad: Tensor, kept: Tensor, kind: str, approximate: str) -> Tensor:
    z = kept.to(grad.dtype)
    if kind == "silu":
        return torch.ops.aten.silu_backward(grad, z)
    return torch.ops.aten.gelu_backward(grad, z, approximate=approximate)


@compact_act_backward.register_fake
def _(grad, kept, kind, approximate):
    return torch.empty_like(grad)


def _setup_act(ctx, inputs, output):
    z, kind, approximate, store_dtype = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.act = (kind, approximate)
    ctx.save_for_backward(output[1] if store_dtype is not None else z)


def _act_backward(ctx, grad, _kept_grad):
    (kept,) = ctx.saved_tensors
    dz = None if grad is None else call(compact_act_backward, grad, kept, *ctx.act)
    return dz, None, None, None


register_autograd(compact_act, _act_backward, _setup_act)


def _act_rows(kind, tensors, idx, weight, bias, eps, dtype):
    _, act, approximate = kind.split(":")
    return _act_forward(act, approximate, row_sources.flat_rows(tensors[0], idx).to(dtype))


row_sources.register("act", _act_rows)


class CompactActivation(nn.Module):
    """GELU/SiLU that keeps its input in 16 bits for backward when running in fp32.

    The next WTA-CRS layer recomputes its sampled rows from that copy instead of storing them.
    """

    def __init__(self, kind: str, approximate: str = "none", store_dtype: torch.dtype = torch.float16):
        super().__init__()
        if kind not in ("gelu", "silu"):
            raise ValueError(f"CompactActivation kind={kind!r}; allowed: 'gelu', 'silu'")
        self.kind, self.approximate, self.store_dtype = kind, approximate, store_dtype

    def extra_repr(self) -> str:
        return f"kind={self.kind}, approximate={self.approximate}, store_dtype={self.store_dtype}"

    def forward(self, z: Tensor) -> Tensor:
        if not torch.is_grad_enabled() or not z.requires_grad:
            return _act_forward(self.kind, self.approximate, z)
        store = self.store_dtype if z.dtype == torch.float32 else None
        y, kept = call(compact_act, z, self.kind, self.approximate, store)
        source = row_sources.RowSource(
            f"act:{self.kind}:{self.approximate}", (kept if store is not None else z,), dtype=y.dtype
        )
        return row_sources.mark(y, source)
