"""Norms that keep one tensor for backward and let the next WTA-CRS layer reuse it.

LayerNorm already keeps only its input (plus mean/rstd), so a forward hook just marks its output
as recomputable. The RMSNorms of T5, LLaMA and Gemma are written in Python and keep 3-4 full
tensors; FusedRMSNorm computes the same values and keeps the input and 1/rms only. Which class has
which style is family knowledge (wtacrs.families); how each style computes is here.

Not to be confused with `wtacrs.grad_norm_history`, the gradient-norm history (||dY_i|| per layer) that the
sampling probabilities read: these are the model's normalisation layers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import row_sources
from .dispatch import arguments, call, grads, register_autograd
from .families import RMSNORM_STYLES

_HALF = (torch.float16, torch.bfloat16)


def mark_layernorm_output(module: nn.LayerNorm, args, output: Tensor) -> Tensor | None:
    """A forward hook: the output marked (a hook's return value replaces the module's output)."""
    if len(module.normalized_shape) != 1:
        return None
    source = row_sources.RowSource("layernorm", (args[0],), module.weight, module.bias, module.eps)
    return row_sources.mark(output, source)


def _layernorm_rows(kind, tensors, idx, weight, bias, eps, dtype):
    r = row_sources.flat_rows(tensors[0], idx)
    dt = weight.dtype if weight is not None else torch.promote_types(r.dtype, torch.float32)
    return F.layer_norm(r.to(dt), (r.shape[-1],), weight, bias, eps)


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


def _out_dtype(style: str, x_dtype: torch.dtype, w_dtype: torch.dtype) -> torch.dtype:
    if style == "gemma":
        return x_dtype
    return torch.promote_types(w_dtype, _normed_dtype(style, x_dtype, w_dtype))


@torch.library.custom_op("wtacrs::rms_norm", mutates_args=())
def rms_norm(x: Tensor, weight: Tensor, eps: float, style: str) -> tuple[Tensor, Tensor]:
    """(the norm's output, 1/rms in fp32 [..., 1])."""
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return _scaled(style, xf * rstd, weight, x.dtype), rstd


@arguments(rms_norm)
class RmsNormArgs(NamedTuple):
    x: Tensor
    weight: Tensor
    eps: float
    style: str  # one of wtacrs.families.NORM_STYLES


@rms_norm.register_fake
def _(*args):
    a = RmsNormArgs._make(args)
    y = a.x.new_empty(a.x.shape, dtype=_out_dtype(a.style, a.x.dtype, a.weight.dtype))
    return y, a.x.new_empty((*a.x.shape[:-1], 1), dtype=torch.float32)


@torch.library.custom_op("wtacrs::rms_norm_backward", mutates_args=())
def rms_norm_backward(
    grad: Tensor, x: Tensor, rstd: Tensor, weight: Tensor, style: str, need_w: bool
) -> tuple[Tensor, Tensor]:
    """(grad_x, grad_weight or [0])."""
    n = x.float() * rstd
    g = grad.float()
    grad_w = x.new_empty(0)
    if need_w:
        nd = _normed_dtype(style, x.dtype, weight.dtype)
        grad_w = (g * n.to(nd).float()).reshape(-1, n.shape[-1]).sum(0).to(weight.dtype)
    gn = g * (weight.float() + (1.0 if style == "gemma" else 0.0))
    grad_x = rstd * (gn - n * (gn * n).mean(-1, keepdim=True))
    return grad_x.to(x.dtype), grad_w


@arguments(rms_norm_backward)
class RmsNormBackwardArgs(NamedTuple):
    grad: Tensor
    x: Tensor
    rstd: Tensor  # the forward's 1/rms
    weight: Tensor
    style: str
    need_w: bool


@rms_norm_backward.register_fake
def _(*args):
    a = RmsNormBackwardArgs._make(args)
    return torch.empty_like(a.x), a.weight.new_empty(a.weight.shape) if a.need_w else a.x.new_empty(0)


def _setup_rms(ctx, inputs, output):
    a = RmsNormArgs._make(inputs)
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.style = a.style
    ctx.save_for_backward(a.x, output[1], a.weight)


def _rms_backward(ctx, grad, _rstd_grad):
    x, rstd, weight = ctx.saved_tensors
    if grad is None:
        return grads(RmsNormArgs)
    need_w = RmsNormArgs._make(ctx.needs_input_grad).weight
    args = RmsNormBackwardArgs(grad=grad, x=x, rstd=rstd, weight=weight, style=ctx.style, need_w=need_w)
    grad_x, grad_w = call(rms_norm_backward, *args)
    return grads(RmsNormArgs, x=grad_x, weight=grad_w if need_w else None)


register_autograd(rms_norm, _rms_backward, _setup_rms)


def _rms_rows(kind, tensors, idx, weight, bias, eps, dtype):
    x, rstd = tensors
    n = row_sources.flat_rows(x, idx).float() * row_sources.flat_rows(rstd, idx)
    return _scaled(kind.partition(":")[2], n, weight, x.dtype)


row_sources.register("layernorm", _layernorm_rows)
row_sources.register("rms", _rms_rows)


class FusedRMSNorm(nn.Module):
    """Same forward as T5LayerNorm / LlamaRMSNorm / GemmaRMSNorm; backward keeps x and 1/rms only."""

    def __init__(self, weight: nn.Parameter, eps: float, style: str):
        super().__init__()
        self.weight, self.eps, self.style = weight, eps, style

    @classmethod
    def from_module(cls, module: nn.Module) -> FusedRMSNorm:
        style = RMSNORM_STYLES[type(module).__name__]
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
        return cls(module.weight, eps, style)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}, style={self.style}"

    def forward(self, x: Tensor) -> Tensor:
        y, rstd = call(rms_norm, x, self.weight, self.eps, self.style)
        return row_sources.mark(y, row_sources.RowSource(f"rms:{self.style}", (x, rstd), self.weight))
