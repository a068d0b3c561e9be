import math

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers.pytorch_utils import Conv1D

import wtacrs
from wtacrs import WTACRSConfig, WTACRSLinear
from wtacrs.memory import SavedTensorCounter

EXACT = WTACRSConfig(ratio=1.0)


def saved_bytes(module, x):
    counter = SavedTensorCounter(module)
    with counter.track():
        y = module(x)
    return counter.total, y


@pytest.mark.parametrize("make", [lambda: nn.Linear(6, 4), lambda: nn.Linear(6, 4, bias=False), lambda: Conv1D(4, 6)])
@pytest.mark.parametrize("shape", [(10, 6), (3, 5, 6)])
def test_ratio_one_is_exactly_nn_linear(make, shape):
    ref = make()
    layer = WTACRSLinear.from_linear(ref, EXACT)
    x = torch.randn(*shape, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(*shape[:-1], 4)
    ref(x).backward(g)
    grads_ref = [x.grad] + [p.grad.clone() for p in ref.parameters()]
    for p in ref.parameters():
        p.grad = None
    layer(x2).backward(g)
    grads = [x2.grad] + [p.grad for p in layer.parameters()]
    for a, b in zip(grads_ref, grads):
        assert torch.equal(a, b)


def test_input_and_bias_gradients_stay_exact_when_sampling():
    ref = nn.Linear(8, 5)
    layer = WTACRSLinear.from_linear(ref, WTACRSConfig(ratio=0.3))
    x = torch.randn(4, 7, 8, requires_grad=True)
    g = torch.randn(4, 7, 5)
    gx_ref = torch.autograd.grad(ref(x), (x, ref.bias), g)
    gx = torch.autograd.grad(layer(x), (x, layer.bias), g)
    torch.testing.assert_close(gx, gx_ref)


def test_weight_gradient_is_unbiased():
    trials = 3000
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    x = torch.randn(24, 6) * torch.exp(torch.randn(24, 1))
    g = torch.randn(24, 4)
    exact = g.t() @ x
    layer = WTACRSLinear.from_linear(lin, WTACRSConfig(ratio=0.25, norm_source="activation"))
    layer.generator = torch.Generator().manual_seed(1)
    samples = []
    for _ in range(trials):
        (gw,) = torch.autograd.grad(layer(x), layer.weight, g)
        samples.append(gw.double())
    samples = torch.stack(samples)
    z = (samples.mean(0) - exact.double()).abs() / (samples.std(0) / math.sqrt(trials))
    assert z.max() < 5.0, z.max()


def test_keeps_only_k_scaled_rows_and_int32_indices():
    lin = nn.Linear(16, 8)
    layer = WTACRSLinear.from_linear(lin, WTACRSConfig(ratio=0.25))
    x = torch.randn(4, 10, 16, requires_grad=True)
    nbytes, _ = saved_bytes(layer, x)
    k = math.ceil(0.25 * 40)
    assert nbytes == k * 16 * 4 + k * 4


class _QKV(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        return self.q(x) + self.k(x) * self.v(x)


def test_layers_reading_one_tensor_share_one_sample_within_a_forward():
    model = wtacrs.apply_wtacrs(_QKV(), WTACRSConfig(ratio=0.25, target_modules=("^[qkv]$",)))
    x = torch.randn(40, 16, requires_grad=True)
    nbytes, y = saved_bytes(model, x)
    # one copy of the 10 kept rows and their indices, plus what the elementwise ops keep
    elementwise = 2 * 40 * 16 * 4  # k(x) and v(x) kept by the product
    assert nbytes == 10 * 16 * 4 + 10 * 4 + elementwise
    y.sum().backward()
    assert all(m.weight.grad is not None for m in (model.q, model.k, model.v))
    # the sampling layer learned who shares its input; their gradient factors join its own
    assert [id(t) for t in model.q.partners] == [id(model.k.norm_history), id(model.v.norm_history)]
    without = wtacrs.apply_wtacrs(_QKV(), WTACRSConfig(ratio=0.25, target_modules=("^[qkv]$",), share_inputs=False))
    assert saved_bytes(without, x)[0] == 3 * (10 * 16 * 4 + 10 * 4) + elementwise


def test_a_tensor_fed_again_gets_a_fresh_sample():
    model = wtacrs.apply_wtacrs(_QKV(), WTACRSConfig(ratio=0.25, target_modules=("^[qkv]$",)))
    x = torch.randn(40, 16)
    g1 = torch.autograd.grad(model(x).sum(), model.q.weight)[0]
    g2 = torch.autograd.grad(model(x).sum(), model.q.weight)[0]
    assert not torch.equal(g1, g2)


def test_rows_are_recomputed_from_a_layernorm_input_instead_of_stored():
    net = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 8))
    wtacrs.apply_wtacrs(net, WTACRSConfig(ratio=0.25, target_modules=(r"^1$",)))
    x = torch.randn(40, 16, requires_grad=True)
    nbytes, y = saved_bytes(net, x)
    ln_saved = 40 * 16 * 4 + 2 * 40 * 4  # LayerNorm's own input, mean and rstd
    assert nbytes == ln_saved + 10 * 4 + 10 * 4  # + int32 indices and fp32 scales, no rows
    g = torch.randn_like(y)
    (gw,) = torch.autograd.grad(y, net[1].weight, g)
    plain = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 8))
    plain.load_state_dict(net.state_dict())
    wtacrs.apply_wtacrs(plain, WTACRSConfig(ratio=0.25, target_modules=(r"^1$",), reuse_saved_inputs=False))
    torch.manual_seed(5)
    net[1].generator = torch.Generator().manual_seed(3)
    plain[1].generator = torch.Generator().manual_seed(3)
    (a,) = torch.autograd.grad(net(x), net[1].weight, g)
    (b,) = torch.autograd.grad(plain(x), plain[1].weight, g)
    torch.testing.assert_close(a, b)


def test_layers_reading_a_recomputable_input_draw_their_own_samples():
    class LNQKV(_QKV):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(16)

        def forward(self, x):
            return super().forward(self.ln(x))

    model = wtacrs.apply_wtacrs(LNQKV(), WTACRSConfig(ratio=0.25, target_modules=("^[qkv]$",)))
    seen = []
    model.q.register_forward_hook(lambda m, a, o: seen.append(getattr(a[0], "_wtacrs_sample", None)))
    model(torch.randn(40, 16, requires_grad=True)).sum().backward()
    assert seen == [None] and model.q.partners == []


def test_bf16_autocast_on_cpu():
    ref = nn.Linear(8, 4)
    layer = WTACRSLinear.from_linear(nn.Linear(8, 4), EXACT)
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, y = ref(x), layer(x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref)
    y_ref.float().sum().backward()
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad)
    sampled = WTACRSLinear.from_linear(nn.Linear(8, 4), WTACRSConfig(ratio=0.5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sampled(torch.randn(2, 6, 8)).float().sum().backward()
    assert sampled.weight.grad.dtype == torch.float32 and torch.isfinite(sampled.weight.grad).all()


def test_forward_and_backward_under_fake_tensor_mode():
    layer = WTACRSLinear.from_linear(nn.Linear(32, 16), WTACRSConfig(ratio=0.3))
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.randn(8, 64, 32, requires_grad=True)
        layer(x).sum().backward()
        assert layer.weight.grad.shape == (16, 32)
    layer.weight.grad = None


def test_patched_model_traces_under_fake_tensor_mode():
    from tests.wtacrs.models import inputs, tiny

    model = wtacrs.apply_wtacrs(tiny("bert"), WTACRSConfig(ratio=0.3))
    batch = inputs("bert")
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_batch = {k: mode.from_tensor(v) for k, v in batch.items()}
        model(**fake_batch).loss.backward()
    model.zero_grad(set_to_none=True)


def test_running_norm_source_learns_which_positions_carry_gradient():
    layer = WTACRSLinear.from_linear(nn.Linear(8, 4), WTACRSConfig(ratio=0.25, norm_source="running"))
    x = torch.randn(16, 8, 8)
    g = torch.zeros(16, 8, 4)
    g[:, 0] = 1.0  # only position 0 matters, like a [CLS] head
    for _ in range(2):
        (gw,) = torch.autograd.grad(layer(x), layer.weight, g)
    table = layer.norm_history.table
    assert table[0] > 100 * table[1:].max()
    torch.testing.assert_close(gw, g.reshape(-1, 4).t() @ x.reshape(-1, 8), rtol=1e-4, atol=1e-4)
    assert layer.norm_history.nbytes() == 8 * 4


def test_example_norm_source_needs_ids_and_reports_its_memory():
    cfg = WTACRSConfig(ratio=0.25, norm_source="example", num_examples=100)
    layer = WTACRSLinear.from_linear(nn.Linear(8, 4), cfg)
    x = torch.randn(4, 8, 8)
    with pytest.raises(ValueError, match="wtacrs.example_ids"):
        layer(x)
    ids = torch.tensor([3, 50, 7, 99])
    with wtacrs.example_ids(ids):
        layer(x).pow(2).sum().backward()
    norm_history = layer.norm_history
    assert norm_history.seen[ids].all() and norm_history.seen.sum() == 4
    assert norm_history.nbytes() == 100 * 8 * 2 + 100 + 4
    with pytest.raises(ValueError, match="has 2 ids but the batch has 4"):
        with wtacrs.example_ids(ids[:2]):
            layer(x)


def test_no_grad_runs_plain_linear_and_eval_mode_still_samples():
    lin = nn.Linear(8, 4)
    layer = WTACRSLinear.from_linear(lin, WTACRSConfig(ratio=0.1))
    x = torch.randn(20, 8, requires_grad=True)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), lin(x))
    # Fine-tuning with model.eval() (dropout off) still trains the weight: keep sampling.
    layer.eval()
    nbytes, _ = saved_bytes(layer, x)
    assert nbytes == 2 * 8 * 4 + 2 * 4


@pytest.mark.cuda
def test_cuda_step_has_no_host_sync():
    layer = WTACRSLinear.from_linear(nn.Linear(64, 32).cuda(), WTACRSConfig(ratio=0.3))
    x = torch.randn(8, 128, 64, device="cuda", requires_grad=True)
    layer(x).sum().backward()  # warm-up (allocations, lazy init)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer(x).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast(dtype):
    layer = WTACRSLinear.from_linear(nn.Linear(64, 32).cuda(), WTACRSConfig(ratio=0.3))
    x = torch.randn(8, 128, 64, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        y = layer(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and torch.isfinite(layer.weight.grad).all()
