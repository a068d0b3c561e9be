"""Exact attention that keeps q, k, v and the softmax statistics, and recomputes the
probabilities in backward (as flash attention does), with the dropout mask kept as bits.

Measured on BERT-base at length 128 (benchmarks/RESULTS.md), eager/SDPA-math attention keeps
about 9 activation-sized tensors per layer; this keeps 3. The paper instead samples Q·Kᵀ and
attn·V, which still keeps the full softmax output for its backward (3.6 units at L=128, more
as L grows), so recomputation is both exact and smaller here.

Precision: with 16-bit inputs the scores, softmax, log-sum-exp (saved as fp32), the dP·P
reduction and the bias gradient's batch sum run in fp32; only the matmul operands are 16-bit, as
in eager attention. Its output and q/k/v/bias gradients are 0.75-0.88x eager's error against fp32
(tests/wtacrs/test_attention_precision.py).

The two ops' arguments have specs, `AttentionArgs` and `AttentionBackwardArgs` (`dispatch.arguments`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .dispatch import arguments, call, grads, register_autograd
from .savers import pack_bits, unpack_bits

NAME = "wtacrs_memeff"


def _expand_kv(t: Tensor, groups: int) -> Tensor:
    if groups == 1:
        return t
    b, h, s, d = t.shape
    return t[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def _reduce_kv(grad: Tensor, groups: int) -> Tensor:
    if groups == 1:
        return grad
    b, hg, s, d = grad.shape
    return grad.view(b, hg // groups, groups, s, d).sum(2)


def _scores(q, k, scaling, mask, bias, causal):
    acc = torch.promote_types(q.dtype, torch.float32)  # softmax statistics in fp32 at least
    s = torch.matmul(q, k.transpose(-1, -2)).to(acc) * scaling
    if bias is not None:
        s = s + bias.to(acc)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.to(acc)
    if causal:
        lq, lk = s.shape[-2], s.shape[-1]
        upper = torch.ones(lq, lk, dtype=torch.bool, device=s.device).triu(lk - lq + 1)
        s = s.masked_fill(upper, float("-inf"))
    return s


def _probs(s: Tensor, lse: Tensor) -> Tensor:
    # Rows masked everywhere have lse = -inf: give them zero probability instead of NaN.
    return torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse))


def _reduce_to(grad: Tensor, shape: torch.Size) -> Tensor:
    dims = [i for i, (g, s) in enumerate(zip(grad.shape, shape)) if s == 1 and g != 1]
    return grad.sum(dims, keepdim=True) if dims else grad


def _attention_forward(q, k, v, mask, bias, scaling, p, causal, groups, out_dtype):
    kx, vx = _expand_kv(k, groups), _expand_kv(v, groups)
    s = _scores(q, kx, scaling, mask, bias, causal)
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    probs = _probs(s, lse)
    del s
    bits = q.new_empty(0, dtype=torch.uint8)
    if p > 0.0:
        keep = torch.rand_like(probs) >= p
        probs = probs * keep * (1.0 / (1.0 - p))
        bits = pack_bits(keep)
    out = torch.matmul(probs.to(v.dtype), vx).to(out_dtype)
    # [B, L, H, D], contiguous: the layout the model reads, with no transpose/copy ops after
    return out.transpose(1, 2).contiguous(), lse, bits


@torch.library.custom_op("wtacrs::memeff_attention", mutates_args=())
def attention_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    bias: Tensor | None,
    scaling: float,
    p: float,
    causal: bool,
    groups: int,
    out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """(out [B, L, H, D] in out_dtype, log-sum-exp [B, H, L, 1], dropout keep bits or [0])."""
    return _attention_forward(q, k, v, mask, bias, scaling, p, causal, groups, out_dtype)


@arguments(attention_op)
class AttentionArgs(NamedTuple):
    q: Tensor  # [B, H, L, D]
    k: Tensor  # [B, H / groups, L, D]
    v: Tensor
    mask: Tensor | None  # bool (True: attend) or additive
    bias: Tensor | None  # an additive position bias (T5), which may need a gradient
    scaling: float
    p: float  # dropout probability
    causal: bool
    groups: int  # query heads per key/value head
    out_dtype: torch.dtype


@attention_op.register_fake
def _(*args):
    a = AttentionArgs._make(args)
    b, h, lq, _ = a.q.shape
    out = a.q.new_empty((b, lq, h, a.v.shape[-1]), dtype=a.out_dtype)
    lse = a.q.new_empty((b, h, lq, 1), dtype=torch.promote_types(a.q.dtype, torch.float32))
    bits = a.q.new_empty(-(-(b * h * lq * a.k.shape[2]) // 8) if a.p > 0.0 else 0, dtype=torch.uint8)
    return out, lse, bits


@torch.library.custom_op("wtacrs::memeff_attention_backward", mutates_args=())
def attention_backward_op(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    bias: Tensor | None,
    lse: Tensor,
    bits: Tensor,
    scaling: float,
    p: float,
    causal: bool,
    groups: int,
    need_bias: bool,
    autocast_device: str,
    autocast_dtype: torch.dtype,
    autocast_enabled: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_q, grad_k, grad_v, grad_bias or [0]), each in its input's dtype."""
    # the forward's matmuls ran under the caller's autocast (their inputs may mix dtypes, as
    # LLaMA's rotated fp32 q/k with a bf16 grad_out): backward runs under the same state, as
    # torch.amp.custom_bwd does, for whichever device the tensors are on
    with torch.autocast(autocast_device, dtype=autocast_dtype, enabled=autocast_enabled):
        gq, gk, gv, gb = _attention_backward(
            grad_out.transpose(1, 2), q, k, v, mask, bias, lse, bits, scaling, p, causal, groups, need_bias
        )
    return gq.to(q.dtype), gk.to(k.dtype), gv.to(v.dtype), gb


def _attention_backward(grad_out, q, k, v, mask, bias, lse, bits, scaling, p, causal, groups, need_bias):
    kx, vx = _expand_kv(k, groups), _expand_kv(v, groups)
    probs = _probs(_scores(q, kx, scaling, mask, bias, causal), lse)
    grad_probs = torch.matmul(grad_out, vx.transpose(-1, -2)).to(probs.dtype)
    dropped = probs
    if p > 0.0:
        keep = unpack_bits(bits, probs.shape).to(probs.dtype) * (1.0 / (1.0 - p))
        dropped = probs * keep
        grad_probs = grad_probs * keep
    grad_v = torch.matmul(dropped.to(grad_out.dtype).transpose(-1, -2), grad_out)
    grad_s = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True))
    grad_q = torch.matmul(grad_s.to(q.dtype), kx) * scaling
    grad_k = torch.matmul(grad_s.to(q.dtype).transpose(-1, -2), q) * scaling
    grad_bias = q.new_empty(0)
    if need_bias:
        grad_bias = _reduce_to(grad_s, bias.shape).to(bias.dtype)
    return grad_q, _reduce_kv(grad_k, groups), _reduce_kv(grad_v, groups), grad_bias


@arguments(attention_backward_op)
class AttentionBackwardArgs(NamedTuple):
    grad_out: Tensor  # [B, L, H, D], as the forward's output
    q: Tensor  # q to groups: `AttentionArgs`' fields of the same names
    k: Tensor
    v: Tensor
    mask: Tensor | None
    bias: Tensor | None
    lse: Tensor  # the forward's log-sum-exp
    bits: Tensor  # the forward's dropout keep bits, or [0]
    scaling: float
    p: float
    causal: bool
    groups: int
    need_bias: bool
    autocast_device: str  # the autocast state the forward ran under
    autocast_dtype: torch.dtype
    autocast_enabled: bool


@attention_backward_op.register_fake
def _(*args):
    a = AttentionBackwardArgs._make(args)
    # contiguous, as the real op returns them: q/k/v arrive as transposed views, and a fake that
    # copied their strides would let a compiled backward view the real gradients wrongly
    grad_bias = a.bias.new_empty(a.bias.shape) if a.need_bias else a.q.new_empty(0)
    return a.q.new_empty(a.q.shape), a.k.new_empty(a.k.shape), a.v.new_empty(a.v.shape), grad_bias


def _setup_attention(ctx, inputs, output):
    a = AttentionArgs._make(inputs)
    _, lse, bits = output
    ctx.mark_non_differentiable(lse, bits)
    ctx.set_materialize_grads(False)
    dev = a.q.device.type
    # the scalars backward passes on to `attention_backward_op`, by its argument names
    ctx.passed_on = dict(
        scaling=a.scaling, p=a.p, causal=a.causal, groups=a.groups, autocast_device=dev,
        autocast_dtype=torch.get_autocast_dtype(dev), autocast_enabled=torch.is_autocast_enabled(dev),
    )  # fmt: skip
    ctx.save_for_backward(a.q, a.k, a.v, a.mask, a.bias, lse, bits if a.p > 0.0 else None)


def _attention_autograd(ctx, grad_out, _lse_grad, _bits_grad):
    q, k, v, mask, bias, lse, bits = ctx.saved_tensors
    if grad_out is None:
        return grads(AttentionArgs)
    need_bias = bias is not None and AttentionArgs._make(ctx.needs_input_grad).bias
    bits = bits if bits is not None else lse.new_empty(0, dtype=torch.uint8)
    args = AttentionBackwardArgs(
        grad_out=grad_out, q=q, k=k, v=v, mask=mask, bias=bias, lse=lse, bits=bits, need_bias=need_bias,
        **ctx.passed_on,
    )  # fmt: skip
    grad_q, grad_k, grad_v, grad_bias = call(attention_backward_op, *args)
    return grads(AttentionArgs, q=grad_q, k=grad_k, v=grad_v, bias=grad_bias if need_bias else None)


register_autograd(attention_op, _attention_autograd, _setup_attention)


def _out_dtype(q: Tensor, v: Tensor) -> torch.dtype:
    """The dtype the forward's last matmul gives under the caller's autocast state."""
    dev = q.device.type
    if torch.is_autocast_enabled(dev) and v.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.get_autocast_dtype(dev)
    return v.dtype


def attention(q, k, v, mask=None, bias=None, scaling=1.0, p=0.0, causal=False, groups=1) -> Tensor:
    """Exact attention, [B, H, L, D] in and [B, L, H, D] out."""
    args = AttentionArgs(
        q, k, v, mask, bias, scaling=float(scaling), p=float(p), causal=bool(causal), groups=int(groups),
        out_dtype=_out_dtype(q, v),
    )  # fmt: skip
    return call(attention_op, *args)[0]


class _MemEffAttentionFn:
    """The attention with its inputs' layout out ([B, H, L, D]), as a Function's `apply` is called."""

    @staticmethod
    def apply(q, k, v, mask, bias, scaling, p, causal, groups):
        return attention(q, k, v, mask, bias, scaling, p, causal, groups).transpose(1, 2)


def memeff_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: Tensor | None = None,
    **kwargs,
):
    """A transformers attention function (AttentionInterface); returns ([B, L, H, D], None)."""
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise ValueError(
            "wtacrs memory-efficient attention supports no softcap or attention sinks; use attention='unchanged'"
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    if is_causal is None:
        is_causal = getattr(module, "is_causal", False)
    causal = bool(is_causal) and attention_mask is None and query.shape[2] > 1
    p = float(dropout) if module.training else 0.0
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-1] != key.shape[-2]:
        attention_mask = attention_mask[..., : key.shape[-2]]
    return attention(query, key, value, attention_mask, position_bias, scaling, p, causal, groups), None


def register() -> None:
    """Make NAME a valid `attn_implementation` (masks built as for SDPA)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, memeff_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
