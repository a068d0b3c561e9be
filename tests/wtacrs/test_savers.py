import pytest
import torch
import torch.nn.functional as F
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.t5.modeling_t5 import T5LayerNorm

from wtacrs.attention import _MemEffAttentionFn
from wtacrs.memory import SavedTensorCounter
from wtacrs.norm_layers import FusedRMSNorm
from wtacrs.savers import BitDropout, BitReLU, CompactActivation, pack_bits, unpack_bits


def saved(module, x):
    counter = SavedTensorCounter(module)
    with counter.track():
        y = module(x)
    return counter.total, y


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 11), (8, 16)])
def test_bits_round_trip(shape):
    mask = torch.rand(shape) > 0.4
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_bits(packed, mask.shape), mask)


def test_bit_dropout_gradient_and_memory():
    drop = BitDropout(0.3).train()
    x = torch.randn(6, 40, dtype=torch.float64, requires_grad=True)

    def seeded(t):
        torch.manual_seed(7)
        return drop(t)

    assert torch.autograd.gradcheck(seeded, (x,))
    y = seeded(x)
    kept = y != 0
    assert 0.5 < kept.double().mean() < 0.9
    torch.testing.assert_close(y[kept], x[kept] / 0.7)
    nbytes, _ = saved(drop, torch.randn(6, 40, requires_grad=True))
    assert nbytes == 6 * 40 // 8
    assert torch.equal(drop.eval()(x), x)


def test_bit_relu():
    x = torch.randn(5, 9, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(5, 9)
    BitReLU()(x).backward(g)
    torch.relu(x2).backward(g)
    assert torch.equal(x.grad, x2.grad)
    assert saved(BitReLU(), torch.randn(5, 9, requires_grad=True))[0] == 6


@pytest.mark.parametrize("kind,approximate", [("gelu", "none"), ("gelu", "tanh"), ("silu", "none")])
def test_compact_activation(kind, approximate):
    act = CompactActivation(kind, approximate)
    x = torch.randn(4, 64, requires_grad=True) * 3
    x.retain_grad()
    ref = (lambda t: F.silu(t)) if kind == "silu" else (lambda t: F.gelu(t, approximate=approximate))
    x2 = x.detach().clone().requires_grad_()
    y = act(x)
    assert torch.equal(y, ref(x2))  # forward is exact
    g = torch.randn_like(y)
    y.backward(g)
    ref(x2).backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=2e-3, atol=2e-3)  # fp16-stored input
    assert saved(act, torch.randn(4, 64, requires_grad=True))[0] == 4 * 64 * 2
    bf = torch.randn(4, 64, dtype=torch.bfloat16, requires_grad=True)
    assert saved(act, bf)[0] == 4 * 64 * 2  # 16-bit input is kept as is


@pytest.mark.parametrize("cls", [T5LayerNorm, LlamaRMSNorm, GemmaRMSNorm])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rmsnorm_matches_and_keeps_less(cls, dtype):
    ref = cls(32).to(dtype)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
    fused = FusedRMSNorm.from_module(ref)
    x = torch.randn(3, 7, 32, dtype=dtype, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y_ref = fused(x), ref(x2)
    assert y.dtype == y_ref.dtype
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, fused.weight), g)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x2, ref.weight), g)
    tol = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(gx, gx_ref, **tol)
    torch.testing.assert_close(gw, gw_ref, **tol)
    kept, _ = saved(fused, torch.randn(3, 7, 32, dtype=dtype, requires_grad=True))
    kept_ref, _ = saved(ref, torch.randn(3, 7, 32, dtype=dtype, requires_grad=True))
    assert kept == 3 * 7 * 32 * x.element_size() + 3 * 7 * 4
    assert kept < kept_ref


def _attn(q, k, v, mask=None, bias=None, p=0.0, causal=False, groups=1, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    return _MemEffAttentionFn.apply(q, k, v, mask, bias, 0.3, p, causal, groups)


def _qkv(heads=4, kv_heads=4, lq=6, lk=6, d=8):
    q = torch.randn(2, heads, lq, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, kv_heads, lk, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, kv_heads, lk, d, dtype=torch.float64, requires_grad=True)
    return q, k, v


def test_memeff_attention_matches_sdpa_forward():
    q, k, v = _qkv()
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[0, ..., 4:] = False
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    torch.testing.assert_close(_attn(q, k, v, mask), ref)
    ref_causal = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    torch.testing.assert_close(_attn(q, k, v, causal=True), ref_causal)


@pytest.mark.parametrize(
    "case",
    ["bool_mask", "float_mask", "bias_with_grad", "causal", "gqa", "dropout", "cross_lengths"],
)
def test_memeff_attention_gradcheck(case):
    q, k, v = _qkv(kv_heads=2 if case == "gqa" else 4, lk=9 if case == "cross_lengths" else 6)
    lk = k.shape[2]
    mask = bias = None
    kw = {}
    if case == "bool_mask":
        mask = torch.rand(2, 1, 6, lk) > 0.3
        mask[..., 0] = True
    elif case == "float_mask":
        mask = torch.where(torch.rand(2, 1, 6, lk) > 0.3, 0.0, -1e4).double()
    elif case == "bias_with_grad":
        bias = torch.randn(1, 4, 6, lk, dtype=torch.float64, requires_grad=True)
    elif case == "causal":
        kw["causal"] = True
    elif case == "gqa":
        kw["groups"] = 2
    elif case == "dropout":
        kw.update(p=0.25, seed=11)
    inputs = (q, k, v) + ((bias,) if bias is not None else ())
    fn = lambda q, k, v, *b: _attn(q, k, v, mask, b[0] if b else None, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


def test_memeff_attention_keeps_qkv_and_statistics_only():
    q, k, v = (torch.randn(2, 4, 32, 8, requires_grad=True) for _ in range(3))
    counter = SavedTensorCounter(torch.nn.Module())
    with counter.track():
        _attn(q, k, v, p=0.1)
    qkv = 3 * q.numel() * 4
    lse = 2 * 4 * 32 * 4
    bits = 2 * 4 * 32 * 32 // 8
    assert counter.total == qkv + lse + bits
