"""Exact attention that keeps q, k, v and the softmax statistics, and recomputes the
probabilities in backward (as flash attention does), with the dropout mask kept as bits.

Measured on BERT-base at length 128 (benchmarks/RESULTS.md), eager/SDPA-math attention keeps
about 9 activation-sized tensors per layer; this keeps 3. The paper instead samples Q·Kᵀ and
attn·V, which still keeps the full softmax output for its backward (3.6 units at L=128, more
as L grows), so recomputation is both exact and smaller here.
"""

from __future__ import annotations

import torch
from torch import Tensor

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


class _MemEffAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, bias, scaling: float, p: float, causal: bool, groups: int):
        kx, vx = _expand_kv(k, groups), _expand_kv(v, groups)
        s = _scores(q, kx, scaling, mask, bias, causal)
        lse = torch.logsumexp(s, dim=-1, keepdim=True)
        probs = _probs(s, lse)
        del s
        bits = None
        if p > 0.0:
            keep = torch.rand_like(probs) >= p
            probs = probs * keep * (1.0 / (1.0 - p))
            bits = pack_bits(keep)
        out = torch.matmul(probs.to(v.dtype), vx)
        ctx.meta = (scaling, p, causal, groups, probs.shape, bias.shape if bias is not None else None)
        dev = q.device.type
        ctx.autocast = (dev, torch.get_autocast_dtype(dev), torch.is_autocast_enabled(dev))
        ctx.save_for_backward(q, k, v, mask, bias, lse, bits)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        # the forward's matmuls ran under the caller's autocast (their inputs may mix dtypes, as
        # LLaMA's rotated fp32 q/k with a bf16 grad_out): backward runs under the same state, as
        # torch.amp.custom_bwd does, for whichever device the tensors are on
        dev, dtype, enabled = ctx.autocast
        with torch.autocast(dev, dtype=dtype, enabled=enabled):
            return _MemEffAttentionFn._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        q, k, v, mask, bias, lse, bits = ctx.saved_tensors
        scaling, p, causal, groups, pshape, bias_shape = ctx.meta
        kx, vx = _expand_kv(k, groups), _expand_kv(v, groups)
        probs = _probs(_scores(q, kx, scaling, mask, bias, causal), lse)
        grad_probs = torch.matmul(grad_out, vx.transpose(-1, -2)).to(probs.dtype)
        dropped = probs
        if bits is not None:
            keep = unpack_bits(bits, pshape).to(probs.dtype) * (1.0 / (1.0 - p))
            dropped = probs * keep
            grad_probs = grad_probs * keep
        grad_v = torch.matmul(dropped.to(grad_out.dtype).transpose(-1, -2), grad_out)
        grad_s = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True))
        grad_q = torch.matmul(grad_s.to(q.dtype), kx) * scaling
        grad_k = torch.matmul(grad_s.to(q.dtype).transpose(-1, -2), q) * scaling
        grad_bias = None
        if bias is not None and ctx.needs_input_grad[4]:
            grad_bias = _reduce_to(grad_s, bias_shape).to(bias.dtype)
        return (grad_q, _reduce_kv(grad_k, groups), _reduce_kv(grad_v, groups), None, grad_bias) + (None,) * 4


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
    out = _MemEffAttentionFn.apply(query, key, value, attention_mask, position_bias, float(scaling), p, causal, groups)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make NAME a valid `attn_implementation` (masks built as for SDPA)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, memeff_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
