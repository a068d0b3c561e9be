"""The weight gradient on the kept rows, `wtacrs::linear_backward`'s sampled product, as one
Triton matmul: C[m, n] = sum_s dY[idx_s, m] * X_s[n], with X_s = kept row s (already scaled) or
scale_s * recomputed row s (a row source), rounded to dY's dtype as the reference rounds it.

The dY rows are gathered by index inside the kernel (no [k, out] copy), the scale and the cast
of the rows happen as their tiles are loaded (no [k, in] copy), products accumulate in fp32 and
the result is written once, in the weight's dtype (the reference rounds to dY's dtype first,
then casts: in bf16/fp16 autocast this kernel is the more precise of the two). A Conv1D weight
([in, out]) gets the transpose, written through the output's strides.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import launch
from .dtypes import kind, to_kind


@triton.jit
def _weight_grad_kernel(
    g_ptr, idx_ptr, x_ptr, scale_ptr, out_ptr, k, n_m, n_n,
    stride_gr, stride_gc, stride_xr, stride_xc, stride_om, stride_on,
    G_KIND: tl.constexpr, X_KIND: tl.constexpr, OUT_KIND: tl.constexpr, SCALED: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    m = tl.program_id(0) * BM + tl.arange(0, BM)
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for s0 in range(0, k, BK):
        s = s0 + tl.arange(0, BK)
        live = s < k
        rows = tl.load(idx_ptr + s, mask=live, other=0).to(tl.int64)
        a = tl.load(
            g_ptr + rows[:, None] * stride_gr + m[None, :] * stride_gc,
            mask=live[:, None] & (m[None, :] < n_m),
            other=0.0,
        )
        b = tl.load(
            x_ptr + s.to(tl.int64)[:, None] * stride_xr + n[None, :] * stride_xc,
            mask=live[:, None] & (n[None, :] < n_n),
            other=0.0,
        )
        if SCALED:
            b = to_kind(b.to(tl.float32) * tl.load(scale_ptr + s, mask=live, other=0.0)[:, None], G_KIND)
        elif X_KIND != G_KIND:
            b = to_kind(b.to(tl.float32), G_KIND)
        if UPCAST:  # the interpreter multiplies bf16 as raw integers: exact fp32 products instead
            acc += tl.dot(tl.trans(a.to(tl.float32)), b.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(tl.trans(a), b, input_precision=PRECISION)
    out = out_ptr + m.to(tl.int64)[:, None] * stride_om + n[None, :] * stride_on
    tl.store(out, to_kind(acc, OUT_KIND), mask=(m[:, None] < n_m) & (n[None, :] < n_n))


def _config(n_m: int, n_n: int, dtype: torch.dtype, device: torch.device) -> dict:
    if device.type != "cuda":  # the interpreter: small tiles, nothing to tune
        return {"BM": 32, "BN": 32, "BK": 16}
    return _gpu_config(n_m, n_n, dtype, torch.cuda.get_device_properties(device).multi_processor_count)


def _gpu_config(n_m: int, n_n: int, dtype: torch.dtype, sms: int) -> dict:
    """The tiles on a GPU with `sms` multiprocessors (apart from `_config`: the sm_90 compile test
    takes them without a GPU)."""
    if dtype == torch.float32:  # no tensor cores unless TF32 is allowed: FMA tiles
        return {"BM": 64, "BN": 64, "BK": 32, "num_warps": 4, "num_stages": 3}
    if triton.cdiv(n_m, 128) * triton.cdiv(n_n, 128) >= sms:
        return {"BM": 128, "BN": 128, "BK": 32, "num_warps": 8, "num_stages": 3}
    return {"BM": 64, "BN": 64, "BK": 32, "num_warps": 4, "num_stages": 3}  # more programs than SMs


def _precision(device: torch.device) -> str:
    """tl.dot's input precision for fp32 operands: TF32 where torch's matmuls may use it."""
    return "tf32" if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def weight_grad(
    g2: torch.Tensor,
    idx: torch.Tensor,
    rows: torch.Tensor,
    scale: torch.Tensor | None,
    transposed: bool,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """g2[idx]^T @ X ([out, in]; its transpose [in, out] when `transposed`), X = rows (or
    rows * scale[:, None] when a scale is given) in g2's dtype; g2 [N, out], idx [k], rows [k, in]."""
    k, n_m, n_n = idx.shape[0], g2.shape[1], rows.shape[1]
    gw = torch.empty((n_n, n_m) if transposed else (n_m, n_n), device=g2.device, dtype=out_dtype)
    if not (k and n_m and n_n):
        return gw.zero_()
    stride_om, stride_on = (gw.stride(1), gw.stride(0)) if transposed else gw.stride()
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    cfg = _config(n_m, n_n, g2.dtype, g2.device)
    grid = (triton.cdiv(n_m, cfg["BM"]), triton.cdiv(n_n, cfg["BN"]))
    launch(
        _weight_grad_kernel[grid], g2, idx, rows, rows if scale is None else scale, gw, k, n_m, n_n,
        g2.stride(0), g2.stride(1), rows.stride(0), rows.stride(1), stride_om, stride_on,
        G_KIND=kind(g2.dtype), X_KIND=kind(rows.dtype), OUT_KIND=kind(out_dtype), SCALED=scale is not None,
        UPCAST=interpret and g2.dtype == torch.bfloat16, PRECISION=_precision(g2.device), **cfg,
    )  # fmt: skip
    return gw
