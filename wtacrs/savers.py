"""Companion memory savers: the operators around the linear layers that would otherwise keep
full activations alive and erase WTA-CRS's saving (see the breakdown in benchmarks/RESULTS.md).

Each one computes exactly what the module it replaces computes in forward; what changes is what
it keeps for backward, always through `save_for_backward` so memory accounting sees it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import rows as row_sources

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


class _BitDropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p: float):
        keep = torch.rand_like(x, dtype=torch.float32) >= p
        ctx.p, ctx.shape = p, x.shape
        ctx.save_for_backward(pack_bits(keep))
        return x * keep.to(x.dtype) * (1.0 / (1.0 - p))

    @staticmethod
    def backward(ctx, grad):
        (bits,) = ctx.saved_tensors
        keep = unpack_bits(bits, ctx.shape)
        return grad * keep.to(grad.dtype) * (1.0 / (1.0 - ctx.p)), None


class BitDropout(nn.Dropout):
    """nn.Dropout that keeps its mask as bits (1/32 of an fp32 activation, 1/8 of a bool mask)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or not torch.is_grad_enabled() or not x.requires_grad:
            return super().forward(x)
        if self.p >= 1.0:
            return x * 0.0
        return _BitDropoutFn.apply(x, float(self.p))


class _BitReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.relu(x)
        ctx.shape = x.shape
        ctx.save_for_backward(pack_bits(y > 0))
        return y

    @staticmethod
    def backward(ctx, grad):
        (bits,) = ctx.saved_tensors
        return grad * unpack_bits(bits, ctx.shape).to(grad.dtype)


class BitReLU(nn.ReLU):
    """ReLU that keeps its mask as bits instead of its whole output."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled() or not x.requires_grad:
            return torch.relu(x)
        return _BitReLUFn.apply(x)


_COMPACT_MAX = 1.0e4  # the derivatives are flat long before this, so clamping loses nothing


def _act_forward(kind: str, approximate: str, z: Tensor) -> Tensor:
    return F.silu(z) if kind == "silu" else F.gelu(z, approximate=approximate)


class _CompactActFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, kind: str, approximate: str, store_dtype: torch.dtype, box: list):
        ctx.kind, ctx.approximate = kind, approximate
        kept = z.clamp(-_COMPACT_MAX, _COMPACT_MAX).to(store_dtype) if z.dtype != store_dtype else z
        ctx.save_for_backward(kept)
        box.append(kept)  # the very tensor saved, so a layer reading y can save it too at no cost
        return _act_forward(kind, approximate, z)

    @staticmethod
    def backward(ctx, grad):
        (kept,) = ctx.saved_tensors
        z = kept.to(grad.dtype)
        if ctx.kind == "silu":
            dz = torch.ops.aten.silu_backward(grad, z)
        else:
            dz = torch.ops.aten.gelu_backward(grad, z, approximate=ctx.approximate)
        return dz, None, None, None, None


def _act_rows(kind: str, approximate: str, out_dtype: torch.dtype):
    def rows(tensors, idx):
        (kept,) = tensors
        return _act_forward(kind, approximate, kept.index_select(0, idx).to(out_dtype))

    return rows


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
        store = self.store_dtype if z.dtype == torch.float32 else z.dtype
        box: list[Tensor] = []
        y = _CompactActFn.apply(z, self.kind, self.approximate, store, box)
        kept = box[0].reshape(-1, z.shape[-1])
        return row_sources.mark(y, (kept,), _act_rows(self.kind, self.approximate, y.dtype))
