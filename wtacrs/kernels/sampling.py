"""`wtacrs::sample_rows` in three kernels and one `torch.topk`.

1. `_row_weights_kernel` (one program per block of rows): w_i = ||x_i|| * g_i, the row norm in
   fp32 and the gradient-norm factor g_i = sqrt(sum_t (table_t[i % L] + 0.2 mean(table_t[:L]) +
   tiny)^2 + sum_f factor_f[i]^2) built from the running tables in the kernel (up to four; the
   per-example factors, which the gradient-norm history gathers from its cache, come in as one precomputed
   sum of squares).
2. `torch.topk(w, k)`: the k heaviest rows, sorted (only for "wta"; "topk" is just this).
3. `_plan_kernel` (one program, looping over N and k in blocks): normalisation p = w / sum w,
   the winner count |C| = argmin_c (1 - P_C) / (k - c) over the sorted top-k, the winner flags,
   the CDF of the remaining mass, the k inverse-CDF draws (binary search) and their scales, the
   int32 indices. Everything `estimator.sampling_plan` does in ~40 aten ops, in one launch.
4. `_gather_kernel` (one program per block of kept rows and columns): kept[i] = (x[idx[i]] *
   scale[i]).to(dtype), bitwise what the reference computes.

The plan is the reference's arithmetic with another summation order (block sums, then a carry),
so an index can differ from the reference's where a draw falls within rounding of a CDF step or
two winner counts tie within rounding; the plan stays unbiased either way, since its scales come
from the same probabilities it drew with.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..config import METHODS
from . import launch
from .dtypes import kind, to_kind

MAX_TABLES = 4
_TINY = float(torch.finfo(torch.float32).tiny)
_FLOOR = 0.2  # wtacrs.grad_norm_history._FLOOR


@triton.jit
def _table_factor_sq(t_ptr, pos, seq, BLOCK_S: tl.constexpr):
    """(table[pos] + 0.2 * mean(table[:seq]) + tiny)^2: `grad_norm_history.running_factor`'s g_i, squared."""
    total = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, seq, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        total += tl.load(t_ptr + s, mask=s < seq, other=0.0).to(tl.float32)
    mean = tl.sum(total, axis=0) / seq
    g = tl.load(t_ptr + pos).to(tl.float32) + 0.2 * mean + 1.1754943508222875e-38
    return g * g


@triton.jit
def _row_weights_kernel(
    x_ptr, w_ptr, sq_ptr, t0, t1, t2, t3, n_rows, n_cols, seq, stride_r, stride_c,
    NUM_T: tl.constexpr, HAS_SQ: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = rows < n_rows
    base = x_ptr + rows.to(tl.int64)[:, None] * stride_r
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for d0 in range(0, n_cols, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        v = tl.load(base + cols[None, :] * stride_c, mask=live[:, None] & (cols[None, :] < n_cols), other=0.0)
        v = v.to(tl.float32)
        acc += v * v
    w = tl.sqrt(tl.sum(acc, axis=1))
    if NUM_T > 0 or HAS_SQ:
        pos = tl.where(live, rows % seq, 0)
        g2 = tl.zeros([BLOCK_R], dtype=tl.float32)
        if NUM_T > 0:
            g2 += _table_factor_sq(t0, pos, seq, BLOCK_S)
        if NUM_T > 1:
            g2 += _table_factor_sq(t1, pos, seq, BLOCK_S)
        if NUM_T > 2:
            g2 += _table_factor_sq(t2, pos, seq, BLOCK_S)
        if NUM_T > 3:
            g2 += _table_factor_sq(t3, pos, seq, BLOCK_S)
        if HAS_SQ:
            g2 += tl.load(sq_ptr + rows, mask=live, other=0.0)
        w = w * tl.sqrt(g2)
    tl.store(w_ptr + rows, w, mask=live)


@triton.jit
def _prob(w, total, inv_n):
    """`estimator._probabilities` elementwise: w / total, uniform when the total is 0."""
    return tl.where(total > 0, tl.maximum(w, 0.0) / tl.maximum(total, 1.1754943508222875e-38), inv_n)


@triton.jit
def _plan_kernel(
    w_ptr, top_ptr, order_ptr, u_ptr, cdf_ptr, flag_ptr, idx_ptr, scale_ptr, n, k, inv_n, search_steps,
    WTA: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    ar = tl.arange(0, BLOCK)
    # the total weight (and the winner flags cleared)
    total = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), axis=0)
    for start in range(0, n, BLOCK):
        offs = start + ar
        total += tl.sum(tl.maximum(tl.load(w_ptr + offs, mask=offs < n, other=0.0), 0.0), axis=0)
        if WTA:
            tl.store(flag_ptr + offs, tl.zeros([BLOCK], dtype=tl.int8), mask=offs < n)
    c = tl.sum(tl.zeros([BLOCK], dtype=tl.int32), axis=0)  # |C|, the number of winners
    if WTA:
        # |C| minimises (1 - P_C) / (k - |C|), P_C the mass of the |C| most probable rows; first minimum
        best = tl.max(tl.full([BLOCK], float("inf"), dtype=tl.float32), axis=0)
        carry = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), axis=0)
        for start in range(0, k, BLOCK):
            s = start + ar
            live = s < k
            p = tl.where(live, _prob(tl.load(top_ptr + s, mask=live, other=0.0), total, inv_n), 0.0)
            upto = tl.cumsum(p, axis=0) + carry
            objective = tl.maximum(1.0 - (upto - p), 0.0) / tl.maximum(k - s, 1).to(tl.float32)
            objective = tl.where(live, objective, float("inf"))
            low = tl.min(objective, axis=0)
            first = tl.min(tl.where(objective == low, s, k), axis=0)
            c = tl.where(low < best, first, c)
            best = tl.minimum(low, best)
            carry = tl.max(tl.where(live, upto, 0.0), axis=0)  # the last partial sum (non-decreasing)
        tl.debug_barrier()
        for start in range(0, k, BLOCK):
            s = start + ar
            winner = (s < k) & (s < c)
            row = tl.load(order_ptr + s, mask=winner, other=0)
            tl.store(flag_ptr + row, tl.full([BLOCK], 1, dtype=tl.int8), mask=winner)
        tl.debug_barrier()
    # the CDF of the mass outside the winners
    carry = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), axis=0)
    for start in range(0, n, BLOCK):
        offs = start + ar
        live = offs < n
        rest = _prob(tl.load(w_ptr + offs, mask=live, other=0.0), total, inv_n)
        if WTA:
            rest = tl.where(tl.load(flag_ptr + offs, mask=live, other=0, cache_modifier=".cg") != 0, 0.0, rest)
        rest = tl.where(live, rest, 0.0)
        cdf = tl.cumsum(rest, axis=0) + carry
        tl.store(cdf_ptr + offs, cdf, mask=live)
        carry = tl.max(tl.where(live, cdf, 0.0), axis=0)
    remaining = carry
    tl.debug_barrier()
    # the k - |C| draws: the first j with cdf_j > u * R (searchsorted right=True), scaled by R / ((k - |C|) p_j)
    n_sampled = (k - c).to(tl.float32)
    for start in range(0, k, BLOCK):
        s = start + ar
        live = s < k
        target = tl.load(u_ptr + s, mask=live, other=0.0) * remaining
        lo = tl.zeros([BLOCK], dtype=tl.int32)
        hi = tl.zeros([BLOCK], dtype=tl.int32) + n
        for _ in range(search_steps):
            open_ = lo < hi
            mid = (lo + hi) // 2
            v = tl.load(cdf_ptr + mid, mask=live & open_, other=0.0, cache_modifier=".cg")
            right = v <= target
            lo = tl.where(open_ & right, mid + 1, lo)
            hi = tl.where(open_ & (v > target), mid, hi)
        drawn = tl.minimum(lo, n - 1)
        p = _prob(tl.load(w_ptr + drawn, mask=live, other=0.0), total, inv_n)
        if WTA:
            p = tl.where(tl.load(flag_ptr + drawn, mask=live, other=0, cache_modifier=".cg") != 0, 0.0, p)
        scale = tl.where(p > 0, remaining / (n_sampled * tl.maximum(p, 1e-30)), 0.0)
        idx = drawn.to(tl.int64)
        if WTA:
            winner = s < c
            idx = tl.where(winner, tl.load(order_ptr + s, mask=live & winner, other=0), idx)
            scale = tl.where(winner, 1.0, scale)
        tl.store(idx_ptr + s, idx.to(tl.int32), mask=live)
        tl.store(scale_ptr + s, scale, mask=live)


@triton.jit
def _gather_kernel(
    x_ptr, idx_ptr, scale_ptr, out_ptr, k, n_cols, stride_r, stride_c,
    KIND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    live = rows < k
    src = tl.load(idx_ptr + rows, mask=live, other=0).to(tl.int64)
    scale = tl.load(scale_ptr + rows, mask=live, other=0.0)
    inside = live[:, None] & (cols[None, :] < n_cols)
    v = tl.load(x_ptr + src[:, None] * stride_r + cols[None, :] * stride_c, mask=inside, other=0.0)
    kept = v.to(tl.float32) * scale[:, None]
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * n_cols + cols[None, :], to_kind(kept, KIND), mask=inside)


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def row_weights(x2: torch.Tensor, tables: list[torch.Tensor], factors: list[torch.Tensor], seq: int) -> torch.Tensor:
    """||x_i|| * g_i for each row of x2 [N, D] (fp32 [N]); g from the running `tables` (each at
    least `seq` long; row i is position i % seq) and the per-row `factors`."""
    n, d = x2.shape
    w = torch.empty(n, device=x2.device, dtype=torch.float32)
    fused, extra = tables[:MAX_TABLES], tables[MAX_TABLES:]
    sq = None
    if factors or extra:
        from ..grad_norm_history import running_factor  # the rare path: more tables than the kernel takes

        shape = (n // seq, seq, d)
        parts = [running_factor(t, shape) for t in extra] + list(factors)
        sq = sum(f.float() * f.float() for f in parts)
    ptrs = [t for t in fused] + [w] * (MAX_TABLES - len(fused))  # unused slots: any pointer
    block_d = _pow2(d, 16, 256)
    block_r = max(1, 4096 // block_d)
    launch(
        _row_weights_kernel[(triton.cdiv(n, block_r),)],
        x2, w, w if sq is None else sq, *ptrs, n, d, max(seq, 1), x2.stride(0), x2.stride(1),
        NUM_T=len(fused), HAS_SQ=sq is not None, BLOCK_R=block_r, BLOCK_D=block_d, BLOCK_S=_pow2(seq, 16, 1024),
    )  # fmt: skip
    return w


def plan(weights: torch.Tensor, k: int, method: str, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`estimator.sampling_plan(weights, k, method, u=u)` as (int32 indices, fp32 scales)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not allowed; choose one of {list(METHODS)}")
    n = weights.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of pairs n={n}")
    device = weights.device
    if method == "topk":
        return torch.topk(weights, k).indices.to(torch.int32), torch.ones(k, device=device, dtype=torch.float32)
    wta = method == "wta"
    if wta:
        top, order = torch.topk(weights, k)  # same order as the reference's topk of w / sum(w)
    else:
        top, order = weights, weights  # unused
    if u is None:
        u = torch.rand(k, device=device, dtype=torch.float32)
    idx = torch.empty(k, device=device, dtype=torch.int32)
    scale = torch.empty(k, device=device, dtype=torch.float32)
    cdf = torch.empty(n, device=device, dtype=torch.float32)
    flags = torch.empty(n if wta else 1, device=device, dtype=torch.int8)
    launch(
        _plan_kernel[(1,)], weights, top, order, u.float(), cdf, flags, idx, scale, n, k, 1.0 / n, n.bit_length(),
        WTA=wta, BLOCK=_pow2(max(n, k), 16, 2048), num_warps=8,
    )  # fmt: skip
    return idx, scale


def gather_rows(x2: torch.Tensor, idx: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(x2[idx] * scale[:, None]).to(dtype) for x2 [N, D], int32 idx [k], fp32 scale [k]."""
    k, d = idx.shape[0], x2.shape[1]
    out = torch.empty((k, d), device=x2.device, dtype=dtype)
    if k and d:
        block_d = _pow2(d, 16, 256)
        block_r = max(1, 2048 // block_d)
        grid = (triton.cdiv(k, block_r), triton.cdiv(d, block_d))
        launch(
            _gather_kernel[grid], x2, idx, scale, out, k, d, x2.stride(0), x2.stride(1),
            KIND=kind(dtype), BLOCK_R=block_r, BLOCK_D=block_d,
        )  # fmt: skip
    return out


def sample_rows(x, tables, factors, u, k, method, keep_rows, dtype):
    """`wtacrs::sample_rows` (see linear_ops): (int32 indices, fp32 scales, scaled rows in dtype)."""
    d = x.shape[-1]
    x2 = x.reshape(-1, d)
    seq = x.shape[-2] if x.dim() >= 3 else 1
    if tables and x.dim() < 3:
        raise ValueError("running tables need an input with batch and sequence dimensions")
    w = row_weights(x2, tables, factors, seq)
    idx, scale = plan(w, k, method, u)
    kept = gather_rows(x2, idx, scale, dtype) if keep_rows else x2.new_empty((0, d), dtype=dtype)
    return idx, scale, kept
