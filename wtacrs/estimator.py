"""Column-row sampling plans and the bare matmul estimator.

Everything here keeps fixed shapes and never reads a tensor value on the host, so it runs
under FakeTensorMode and never stalls a GPU: the winner/sampled split is a mask, not a branch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import METHODS


def _probabilities(weights: Tensor) -> Tensor:
    w = weights.float().clamp_min(0)
    total = w.sum()
    uniform = torch.full_like(w, 1.0 / w.numel())
    # All-zero weights mean every column-row product is zero: any plan is unbiased, use uniform.
    return torch.where(total > 0, w / total.clamp_min(torch.finfo(torch.float32).tiny), uniform)


def _winners(p: Tensor, k: int):
    """(order of the k most probable pairs, which of the k slots are winners, |C|)."""
    top_p, order = torch.topk(p, k)
    slots = torch.arange(k, device=p.device)
    mass_before = torch.cumsum(top_p, 0) - top_p  # P_C for |C| = slot index
    objective = (1.0 - mass_before).clamp_min(0) / (k - slots).to(torch.float32)
    c = torch.argmin(objective)  # first minimum: |C| = 0 wins ties with 1/k
    return order, slots < c, c


def sampling_plan(
    weights: Tensor, k: int, method: str = "wta", generator: torch.Generator | None = None, u: Tensor | None = None
):
    """Pick k of n column-row pairs with probabilities proportional to `weights` (shape [n]).

    Returns (idx [k] int64, scale [k] float32) such that sum_s scale_s * a[:, idx_s] b[idx_s, :]
    is an unbiased estimate of a @ b for "wta" and "crs" (biased, deterministic for "topk").

    wta: the |C| most probable pairs are kept exactly (scale 1); the other k - |C| slots are drawn
    with replacement from the remaining mass R and scaled by R / ((k - |C|) p_j). |C| minimises
    (1 - P_C) / (k - |C|) over 0 <= |C| < k, so |C| = 0 when no winner set beats 1/k.
    `u` ([k] uniforms in [0, 1)) replaces the draw: a custom op cannot take a generator.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not allowed; choose one of {list(METHODS)}")
    if weights.dim() != 1:
        raise ValueError(f"weights must be 1-D (one per column-row pair), got shape {tuple(weights.shape)}")
    n = weights.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of pairs n={n}")
    p = _probabilities(weights)
    device = p.device
    if method == "topk":
        idx = torch.topk(p, k).indices
        return idx, torch.ones(k, device=device, dtype=torch.float32)

    slots = torch.arange(k, device=device)
    if method == "wta":
        order, is_winner, c = _winners(p, k)
        winner_mask = torch.zeros_like(p).scatter(0, order, is_winner.to(p.dtype))
        rest = p * (1.0 - winner_mask)
        n_sampled = (k - c).to(torch.float32)
    else:
        is_winner = torch.zeros(k, dtype=torch.bool, device=device)
        order = slots  # unused: no winners
        rest = p
        n_sampled = torch.full((), float(k), device=device)

    cdf = torch.cumsum(rest, 0)
    remaining = cdf[-1]
    if u is None:
        u = torch.rand(k, device=device, generator=generator, dtype=torch.float32)
    # right=True returns the first j with cdf_j > u*R, which always has rest_j > 0.
    drawn = torch.searchsorted(cdf, (u * remaining).unsqueeze(0), right=True).squeeze(0).clamp_max(n - 1)
    p_drawn = rest[drawn]
    sampled_scale = torch.where(
        p_drawn > 0, remaining / (n_sampled * p_drawn.clamp_min(1e-30)), torch.zeros_like(p_drawn)
    )
    idx = torch.where(is_winner, order, drawn)
    scale = torch.where(is_winner, torch.ones_like(sampled_scale), sampled_scale)
    return idx, scale


def pair_weights(a: Tensor, b: Tensor) -> Tensor:
    """||a[:, i]|| * ||b[i, :]||: the optimal (variance-minimising) sampling weights."""
    return torch.linalg.vector_norm(a.float(), dim=0) * torch.linalg.vector_norm(b.float(), dim=1)


def estimate_matmul(
    a: Tensor, b: Tensor, k: int, method: str = "wta", generator: torch.Generator | None = None
) -> Tensor:
    """Estimate a @ b ([m, n] @ [n, p]) from k of the n column-row pairs.

    "wta" and "crs" are unbiased; "topk" keeps the k heaviest pairs and is biased.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"need a [m, n] and b [n, p]; got {tuple(a.shape)} and {tuple(b.shape)}")
    idx, scale = sampling_plan(pair_weights(a, b), k, method, generator)
    a_kept = a.index_select(1, idx) * scale.to(a.dtype)
    return a_kept @ b.index_select(0, idx)


def expected_squared_error(a: Tensor, b: Tensor, weights: Tensor, k: int, method: str = "wta") -> Tensor:
    """E ||estimate - a @ b||_F^2 of a k-pair estimate drawn with probabilities ∝ weights, in closed form.

    For the unbiased methods this is the variance: (R * sum_j c_j / r_j - ||S_rest||^2) / (k - |C|),
    with c_j = ||a_j||^2 ||b_j||^2, r the probability left outside the winners and S_rest their
    exact product; for "topk" it is the squared bias. No sampling noise, so layers and methods
    compare exactly.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not allowed; choose one of {list(METHODS)}")
    a, b = a.double(), b.double()
    p = _probabilities(weights).double()
    if method == "topk":
        idx = torch.topk(p, k).indices
        return ((a[:, idx] @ b[idx] - a @ b) ** 2).sum()
    if method == "wta":
        order, is_winner, c = _winners(p.float(), k)
        winner = torch.zeros_like(p).scatter(0, order, is_winner.double())
    else:
        winner, c = torch.zeros_like(p), torch.zeros((), dtype=torch.long)
    rest = p * (1 - winner)
    remaining = rest.sum()
    pair_sq = torch.linalg.vector_norm(a, dim=0) ** 2 * torch.linalg.vector_norm(b, dim=1) ** 2
    outside = (pair_sq / rest.clamp_min(1e-300) * (rest > 0)).sum()
    s_rest = (a * (1 - winner)) @ b
    return ((remaining * outside - (s_rest**2).sum()) / (k - c).double()).clamp_min(0)
