import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from wtacrs import estimate_matmul, pair_weights, sampling_plan
from wtacrs.estimator import expected_squared_error

TRIALS = 4000
Z_MAX = 5.0  # per-entry bound on |mean - exact| in standard errors; P(|N(0,1)| > 5) = 5.7e-7


def heavy_tailed(m=6, n=40, p=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    col_scale = torch.exp(1.5 * torch.randn(n, generator=g))
    a = torch.randn(m, n, generator=g, dtype=torch.float64) * col_scale
    b = torch.randn(n, p, generator=g, dtype=torch.float64)
    return a, b


def draws(a, b, k, method, trials=TRIALS, seed=1, rescale=True):
    g = torch.Generator().manual_seed(seed)
    w = pair_weights(a, b)
    out = []
    for _ in range(trials):
        idx, scale = sampling_plan(w, k, method, g)
        s = scale.double() if rescale else torch.ones_like(scale, dtype=torch.float64)
        out.append((a[:, idx] * s) @ b[idx])
    return torch.stack(out)


def z_scores(samples, exact):
    se = samples.std(0) / math.sqrt(samples.shape[0])
    return (samples.mean(0) - exact).abs() / se.clamp_min(1e-12)


@pytest.mark.parametrize("method", ["wta", "crs"])
def test_unbiased(method):
    a, b = heavy_tailed()
    z = z_scores(draws(a, b, 10, method), a @ b)
    assert z.max() < Z_MAX, z.max()


def test_the_unbiasedness_check_detects_a_missing_rescale():
    # The official code skips the 1/(s p) rescale in some paths; the same check must catch that.
    a, b = heavy_tailed()
    z = z_scores(draws(a, b, 10, "wta", rescale=False), a @ b)
    assert z.max() > 10 * Z_MAX


def test_wta_has_lower_variance_than_crs_on_heavy_tailed_norms():
    a, b = heavy_tailed()
    exact = a @ b
    err = {m: ((draws(a, b, 10, m, trials=2000) - exact) ** 2).sum((1, 2)) for m in ("wta", "crs")}
    mean = {m: e.mean().item() for m, e in err.items()}
    se = {m: e.std().item() / math.sqrt(e.numel()) for m, e in err.items()}
    assert mean["wta"] + 3 * se["wta"] < mean["crs"] - 3 * se["crs"], (mean, se)


def test_topk_is_deterministic_and_biased():
    a, b = heavy_tailed()
    samples = draws(a, b, 10, "topk", trials=3)
    assert torch.equal(samples[0], samples[1])
    assert not torch.allclose(samples[0], a @ b)


def test_exact_when_the_mass_sits_in_fewer_than_k_pairs():
    a, b = heavy_tailed()
    a[:, 5:] = 0  # only 5 non-zero columns, k = 8: all of them become winners
    for est in draws(a, b, 8, "wta", trials=20):
        torch.testing.assert_close(est, a @ b)


def test_adaptive_winner_count():
    g = torch.Generator().manual_seed(0)
    _, scale = sampling_plan(torch.ones(100), 10, "wta", g)
    assert (scale != 1).all(), "uniform weights: no winner beats 1/k, so no slot is kept exactly"
    w = torch.ones(100)
    w[[3, 7]] = 1000.0
    idx, scale = sampling_plan(w, 10, "wta", g)
    assert idx[:2].tolist() == [3, 7] and scale[:2].tolist() == [1.0, 1.0]
    assert (scale[2:] != 1).all()


def test_zero_weights_give_zero_not_nan():
    a = torch.zeros(3, 20)
    b = torch.randn(20, 4)
    est = estimate_matmul(a, b, 5)
    assert torch.equal(est, torch.zeros(3, 4))


def test_fixed_shapes_under_fake_tensor_mode():
    with FakeTensorMode():
        a, b = torch.randn(64, 1000), torch.randn(1000, 32)
        idx, scale = sampling_plan(pair_weights(a, b), 300)
        est = estimate_matmul(a, b, 300)
    assert idx.shape == (300,) and scale.shape == (300,) and est.shape == (64, 32)


def test_bad_arguments():
    with pytest.raises(ValueError, match="method='bogus' is not allowed"):
        sampling_plan(torch.ones(5), 2, "bogus")
    with pytest.raises(ValueError, match="k=6 must be between 1 and"):
        sampling_plan(torch.ones(5), 6)
    with pytest.raises(ValueError, match="need a \\[m, n\\] and b \\[n, p\\]"):
        estimate_matmul(torch.ones(2, 3), torch.ones(4, 2), 1)


@pytest.mark.parametrize("method", ["wta", "crs", "topk"])
def test_closed_form_error_matches_monte_carlo(method):
    a, b = heavy_tailed()
    exact = a @ b
    sq = ((draws(a, b, 10, method, trials=3000) - exact) ** 2).sum((1, 2))
    predicted = expected_squared_error(a, b, pair_weights(a, b), 10, method).item()
    se = sq.std().item() / math.sqrt(sq.numel())
    assert abs(sq.mean().item() - predicted) <= 5 * se + 1e-9 * predicted, (sq.mean().item(), predicted, se)
