"""The preset's attention in 16-bit weights rounds no worse than eager attention in the same dtype.

T5-style attention (no 1/sqrt(d) scaling, a trainable position bias broadcast over the batch):
the output and the gradients of q, k, v and the bias, against an fp32 reference, are at least as
close as the unpatched eager attention's (which does every step in the input dtype). The op's
softmax statistics, log-sum-exp, dP·P reductions and the bias gradient's batch sum run in fp32;
what it saves for backward stays q, k, v, the bias and an fp32 log-sum-exp (test_savers.py)."""

import pytest
import torch

from wtacrs.attention import attention

B, H, L, D = 3, 4, 16, 8
SEEDS = range(4)


def _eager(q, k, v, bias, mask, scaling):
    """transformers' eager_attention_forward (T5's and BERT's), every step in the input dtype."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scaling + bias
    if mask is not None:
        s = s + torch.zeros_like(s[:, :1]).masked_fill(~mask, torch.finfo(s.dtype).min)
    return torch.matmul(torch.softmax(s, dim=-1), v).transpose(1, 2)


def _case(seed, masking, spread):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, L, D, generator=g) * spread for _ in range(2))
    v = torch.randn(B, H, L, D, generator=g)
    bias = torch.randn(1, H, L, L, generator=g)
    grad_out = torch.randn(B, L, H, D, generator=g)
    mask = None
    if masking == "causal":
        mask = torch.ones(L, L, dtype=torch.bool).tril().expand(B, 1, L, L)
    elif masking == "padding":
        mask = torch.ones(B, 1, L, L, dtype=torch.bool)
        mask[0, ..., L - 5 :] = False  # keys only: every query row keeps some keys
    return (q, k, v, bias), grad_out, mask


def _run(fn, tensors, grad_out, mask, dtype):
    xs = [t.to(dtype).detach().requires_grad_() for t in tensors]
    if fn == "eager":
        out = _eager(*xs, mask, 1.0)
    else:
        out = attention(xs[0], xs[1], xs[2], mask, xs[3], scaling=1.0)
    out.backward(grad_out.to(dtype))
    return [out.detach().float()] + [x.grad.float() for x in xs]


@pytest.mark.parametrize("spread", [1.0, 2.0], ids=["moderate", "peaked"])  # peaked: near one-hot rows
@pytest.mark.parametrize("masking", [None, "causal", "padding"], ids=["none", "causal", "padding"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_t5_style_gradients_no_worse_than_eager(dtype, masking, spread):
    names = ("out", "q", "k", "v", "bias")
    sq_err = {fn: [0.0] * len(names) for fn in ("eager", "memeff")}
    sq_ref = [0.0] * len(names)
    for seed in SEEDS:
        tensors, grad_out, mask = _case(seed, masking, spread)
        truth = _run("eager", tensors, grad_out, mask, torch.float32)
        for fn in sq_err:
            got = _run(fn, tensors, grad_out, mask, dtype)
            for i, (a, t) in enumerate(zip(got, truth)):
                assert torch.isfinite(a).all(), (fn, names[i])
                sq_err[fn][i] += (a - t).norm().item() ** 2
        for i, t in enumerate(truth):
            sq_ref[i] += t.norm().item() ** 2
    for i, name in enumerate(names):
        ours, eager = ((sq_err[fn][i] / sq_ref[i]) ** 0.5 for fn in ("memeff", "eager"))
        # ours computes the softmax and its backward in fp32: 0.75-0.88 of eager's error in these
        # cases; with its scores rounded to 16 bits before the softmax it measured 1.9x and fails
        assert ours <= 0.95 * eager, f"{name}: relative error {ours:.4g} vs eager {eager:.4g} in {dtype}"
