"""What a CUDA device would run, for tracing on a machine without one.

A CPU-only torch cannot hold fake tensors on a cuda device (autograd needs a CUDA device guard),
so the estimate traces on fake CPU tensors. Left alone, the CPU kernels then decide what is saved
for backward, and they save more than CUDA's: dropout keeps a float mask (CUDA's fused
`native_dropout` keeps a bool one) and scaled-dot-product attention takes the math path (keeping
the probabilities and their dropout mask) where CUDA runs a fused kernel that keeps only q, k, v,
the output and a log-sum-exp. `cuda_kernels` routes those calls to the ops CUDA would pick, by the
same rules as ATen's `select_sdp_backend`; a `DeviceModel` (`SM90`) says how the caching allocator
counts what they allocate.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wtacrs.kernels import modelled_cuda

from .cuda_autocast import cuda_autocast

_LOW = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class DeviceModel:
    """A CUDA device as the estimate assumes it: what `estimate_device` in a result names."""

    name: str
    sm: tuple[int, int]
    round_bytes: int  # the caching allocator hands out blocks in multiples of this
    workspace_bytes: int  # cuBLAS workspace, allocated at the first matmul and kept


# H100/H200 (sm90), torch 2.11: allocations round up to 512 bytes; the cuBLAS/cuBLASLt workspace
# is 32 MiB per handle on Hopper, and forward (the Python thread) and backward (autograd's device
# thread) each get their own handle.
SM90 = DeviceModel("cuda-sm90", (9, 0), 512, 2 * 32 * 2**20)


def sdpa_backend(q, k, v, attn_mask, is_causal: bool, model: DeviceModel) -> str:
    """The backend ATen would choose on `model` for these inputs ('flash', 'efficient', 'math').

    cuDNN attention, preferred on sm90 by recent builds, keeps what flash keeps (q, k, v, out and a
    log-sum-exp), so for memory it is counted as flash.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "math"
    d_q, d_v = q.shape[-1], v.shape[-1]
    # check_last_dim_stride_equals_1_dense: on CUDA every fused kernel needs unit last strides,
    # the mask's included (T5's permuted position bias fails this and takes the math path)
    strided = all(t.stride(-1) == 1 for t in (q, k, v) if t.shape[-1] != 1)
    if attn_mask is not None and attn_mask.stride(-1) != 1:
        return "math"
    heads_ok = q.shape[-3] % k.shape[-3] == 0 and k.shape[-3] == v.shape[-3]
    if (
        q.dtype in _LOW
        and attn_mask is None
        and d_q == k.shape[-1] == d_v
        and d_q <= 256
        and d_q % 8 == 0
        and not (is_causal and q.shape[-2] != k.shape[-2])
        and strided
        and heads_ok
        and model.sm >= (8, 0)
    ):
        return "flash"
    align = 8 if q.dtype in _LOW else 4  # minimum_gemm_alignment on sm80+ with tensor cores
    if d_q == k.shape[-1] and d_q % align == 0 and d_v % align == 0 and strided and heads_ok:
        return "efficient"
    return "math"


def _expand_heads(t, heads: int):
    groups = heads // t.shape[-3]
    return t if groups == 1 else t.repeat_interleave(groups, dim=-3)


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, *, model):
    if torch.is_autocast_enabled("cpu"):
        # CUDA autocast's SDPA wrapper: every floating input in the autocast dtype, and the kernel
        # (the math path included) then runs with autocast off
        low = torch.get_autocast_dtype("cpu")
        q, k, v, attn_mask = (t.to(low) if t is not None and t.is_floating_point() else t for t in (q, k, v, attn_mask))
        with torch.autocast("cpu", enabled=False):
            return _sdpa(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, model=model)
    backend = sdpa_backend(q, k, v, attn_mask, is_causal, model)
    if backend != "flash":  # the fused efficient kernel and the math path both take equal heads
        k, v = _expand_heads(k, q.shape[-3]), _expand_heads(v, q.shape[-3])
    if backend == "flash":
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, scale=scale)[0]
    if backend == "efficient":
        bias = None if attn_mask is None else _efficient_bias(attn_mask, q, k)
        needs_lse = any(t.requires_grad for t in (q, k, v)) and torch.is_grad_enabled()
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, bias, needs_lse, dropout_p, is_causal, scale=scale
        )[0]
    return _sdpa_math(q, k, v, attn_mask, dropout_p, is_causal, scale)


def _efficient_bias(mask, q, k):
    """The bias as ATen hands it to the efficient kernel (`convert_boolean_attn_mask`, then
    `preprocess_mask`): unless its rows are 8-aligned with a unit last stride, it is copied into
    a buffer padded by 8 - len % 8 columns, and that buffer is what backward keeps."""
    if mask.dtype == torch.bool:
        mask = torch.where(mask, 0.0, torch.full((), -math.inf, dtype=q.dtype))
    aligned = mask.stride(-1) == 1 and all(s % 8 == 0 for s in mask.stride()[:-1])
    if not aligned:
        n = mask.shape[-1]
        mask = F.pad(mask, (0, 8 - n % 8))[..., :n]
    return mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])


def _sdpa_math(q, k, v, attn_mask, dropout_p, is_causal, scale):
    """ATen's math fallback as it runs on CUDA: its dropout is the fused one (a bool mask)."""
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    s = math.sqrt(scale)
    scores = (q * s) @ (k * s).transpose(-2, -1)
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, -math.inf)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        probs = torch.ops.aten.native_dropout(probs, dropout_p, True)[0]
    return probs @ v


@contextlib.contextmanager
def cuda_kernels(model: DeviceModel = SM90):
    """Route the calls whose CPU kernels save other tensors than CUDA's to the CUDA choice.

    The functions are swapped on `torch.nn.functional` rather than caught by a TorchFunctionMode:
    a mode is off while it handles `Tensor.backward`, so the forward that checkpointing recomputes
    in backward would run the CPU kernels and save other tensors than it did the first time.
    """
    dropout, sdpa = F.dropout, F.scaled_dot_product_attention

    def cuda_dropout(input, p=0.5, training=True, inplace=False):
        # ATen's `dropout` takes the fused kernel on CUDA whenever 0 < p < 1 and input is non-empty
        if training and 0 < p < 1 and input.numel() and not inplace:
            return torch.ops.aten.native_dropout(input, p, True)[0]
        return dropout(input, p, training, inplace)

    F.dropout = cuda_dropout
    F.scaled_dot_product_attention = functools.partial(_sdpa, model=model)
    try:
        # the wtacrs ops allocate what their CUDA implementations (the Triton kernels') would
        with cuda_autocast(), modelled_cuda(model.sm):
            yield
    finally:
        F.dropout, F.scaled_dot_product_attention = dropout, sdpa
