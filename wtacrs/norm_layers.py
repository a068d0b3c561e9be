"""Norms that keep one tensor for backward and let the next WTA-CRS layer reuse it.

LayerNorm already keeps only its input (plus mean/rstd), so a forward hook just marks its output
as recomputable. The RMSNorms of T5, LLaMA and Gemma are written in Python and keep 3-4 full
tensors; FusedRMSNorm computes the same values and keeps the input and 1/rms only. Which class has
which style is family knowledge (wtacrs.families); how each style computes is here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import rows as row_sources
from .families import RMSNORM_STYLES

_HALF = (torch.float16, torch.bfloat16)


def mark_layernorm_output(module: nn.LayerNorm, args, output: Tensor) -> None:
    x = args[0]
    features = x.shape[-1]
    shape, weight, bias, eps = module.normalized_shape, module.weight, module.bias, module.eps
    if len(shape) != 1:
        return

    def rows(tensors, idx):
        (x2,) = tensors
        r = x2.index_select(0, idx)
        dt = weight.dtype if weight is not None else torch.promote_types(r.dtype, torch.float32)
        return F.layer_norm(r.to(dt), shape, weight, bias, eps)

    row_sources.mark(output, (x.reshape(-1, features),), rows)


def _normed_dtype(style: str, x_dtype: torch.dtype, w_dtype: torch.dtype) -> torch.dtype:
    if style == "t5":
        return w_dtype if w_dtype in _HALF else torch.promote_types(x_dtype, torch.float32)
    if style == "gemma":
        return torch.float32
    return x_dtype


def _scaled(style: str, n: Tensor, weight: Tensor, x_dtype: torch.dtype) -> Tensor:
    """The norm's output from the fp32 normalised value, computed as the module computes it."""
    if style == "gemma":  # Gemma's weight is stored as an offset from 1, and multiplies in fp32
        return (n * (1.0 + weight.float())).to(x_dtype)
    return weight * n.to(_normed_dtype(style, x_dtype, weight.dtype))


class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float, style: str, box: list):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.nd = _normed_dtype(style, x.dtype, weight.dtype)
        ctx.offset = 1.0 if style == "gemma" else 0.0
        ctx.save_for_backward(x, rstd, weight)
        box.extend((x, rstd))
        return _scaled(style, xf * rstd, weight, x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, rstd, weight = ctx.saved_tensors
        n = x.float() * rstd
        g = grad.float()
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (g * n.to(ctx.nd).float()).reshape(-1, n.shape[-1]).sum(0).to(weight.dtype)
        gn = g * (weight.float() + ctx.offset)
        grad_x = rstd * (gn - n * (gn * n).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), grad_w, None, None, None


class FusedRMSNorm(nn.Module):
    """Same forward as T5LayerNorm / LlamaRMSNorm / GemmaRMSNorm; backward keeps x and 1/rms only."""

    def __init__(self, weight: nn.Parameter, eps: float, style: str):
        super().__init__()
        self.weight, self.eps, self.style = weight, eps, style

    @classmethod
    def from_module(cls, module: nn.Module) -> FusedRMSNorm:
        style = RMSNORM_STYLES[type(module).__name__]
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
        fused = cls(module.weight, eps, style)
        object.__setattr__(fused, "original", module)
        return fused

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}, style={self.style}"

    def forward(self, x: Tensor) -> Tensor:
        box: list[Tensor] = []
        y = _RMSNormFn.apply(x, self.weight, self.eps, self.style, box)
        x_saved, rstd = box
        weight, style = self.weight, self.style
        features = x.shape[-1]

        def rows(tensors, idx):
            x2, r2 = tensors
            n = x2.index_select(0, idx).float() * r2.index_select(0, idx)
            return _scaled(style, n, weight, x2.dtype)

        return row_sources.mark(y, (x_saved.reshape(-1, features), rstd.reshape(-1, 1)), rows)
