"""The ops called whole (the dispatcher) and called directly (their implementation under an
autograd.Function, `wtacrs.dispatch`) are one computation: in every family, in every dtype users
train in, with and without LoRA, a training step gives bit-identical losses and gradients and
saves the same bytes for backward. And each call takes the route it must: whole under a dispatch
mode or with a tensor subclass, op by op on fake tensors, directly otherwise."""

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import wtacrs
from tests.grid import family_grid
from tests.wtacrs.models import TINY, inputs, tiny
from wtacrs import dispatch, savers

DTYPES = {  # name -> (autocast dtype or None, weight dtype)
    "fp32": (None, torch.float32),
    "bf16-autocast": (torch.bfloat16, torch.float32),
    "fp16-autocast": (torch.float16, torch.float32),
    "bf16-weights": (None, torch.bfloat16),
}


def _model(family, weights, lora):
    model = tiny(family).to(weights)
    if lora:
        peft = pytest.importorskip("peft")
        torch.manual_seed(1)
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_dropout=0.0, init_lora_weights=False))
    return wtacrs.apply_wtacrs(model, wtacrs.WTACRSConfig(ratio=0.3))


def _step(model, family, autocast_dtype, seed, device="cpu"):
    """A training step (dropout on, WTA-CRS sampling at 0.3): loss, gradients, bytes saved for backward."""
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().nbytes())
        return t

    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    context = torch.autocast(device, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    batch = {k: v.to(device) for k, v in inputs(family, seed=seed).items()}
    with context, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, sorted(saved)


@pytest.mark.parametrize(
    "family,dtype,lora",
    family_grid(TINY, sorted(DTYPES), [False, True], ids=[sorted(DTYPES), ["preset", "lora+preset"]]),
)
def test_direct_calls_are_the_dispatched_ops(family, dtype, lora, monkeypatch):
    autocast_dtype, weights = DTYPES[dtype]
    whole, direct = _model(family, weights, lora), _model(family, weights, lora)
    for seed in (0, 1):  # the second step samples with the gradient-norm history the first left
        monkeypatch.setattr(dispatch, "DIRECT", False)
        want = _step(whole, family, autocast_dtype, seed)
        monkeypatch.setattr(dispatch, "DIRECT", True)
        got = _step(direct, family, autocast_dtype, seed)
        assert torch.equal(got[0], want[0]), (got[0], want[0])
        assert got[1].keys() == want[1].keys() and got[1]
        for name, g in got[1].items():
            assert torch.equal(g, want[1][name]), name
        assert got[2] == want[2]  # the same tensors saved for backward


class _Seen(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_each_call_takes_its_route():
    x = torch.randn(4, 8, requires_grad=True)
    assert dispatch._route((x, 0.5)) == "reference"
    assert dispatch._route(([x], None, 3)) == "reference"
    with _Seen() as seen:
        assert dispatch._route((x, 0.5)) == "op"
        savers.BitReLU()(x * 1.0)
    assert "wtacrs.bit_relu.default" in seen.ops  # a dispatch mode sees the op, once, whole
    assert not any(op.startswith("aten.gt") for op in seen.ops)  # not the reference's comparisons

    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
    assert dispatch._route((fake, 0.5)) == "fake"
    assert dispatch._route(([fake], x)) == "fake"

    class Sub(torch.Tensor):
        pass

    assert dispatch._route((x.as_subclass(Sub), 0.5)) == "op"  # a subclass dispatches the op itself


def test_a_direct_call_names_its_op_for_the_profiler():
    # profiler.instruments.saved_by names a saver by its grad_fn: the op's name, whichever route ran it
    x = torch.randn(4, 8, requires_grad=True)
    y = savers.BitReLU()(x * 1.0)
    assert type(y.grad_fn).__name__.startswith("Direct_wtacrs_bit_relu")
    assert y.grad_fn._forward_cls.op_name == "wtacrs::bit_relu"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["fp32", "bf16-autocast"])
@pytest.mark.parametrize("family", ["bert", "t5", "llama"])
def test_direct_calls_run_the_same_kernels_on_cuda(family, dtype, monkeypatch):
    """On a GPU the direct route calls the ops' CUDA implementations (the Triton kernels) as the
    dispatcher does: the same losses and gradients."""
    autocast_dtype, weights = DTYPES[dtype]
    whole, direct = (_model(family, weights, lora=False).cuda() for _ in range(2))
    for seed in (0, 1):
        monkeypatch.setattr(dispatch, "DIRECT", False)
        want = _step(whole, family, autocast_dtype, seed, "cuda")
        monkeypatch.setattr(dispatch, "DIRECT", True)
        got = _step(direct, family, autocast_dtype, seed, "cuda")
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=0)
        for name, g in got[1].items():
            torch.testing.assert_close(g, want[1][name], rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
        assert got[2] == want[2]


def test_a_direct_call_is_named_in_a_profiler_trace():
    x = torch.randn(4, 8, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        savers.BitReLU()(x * 1.0).sum().backward()
    names = {e.name for e in prof.events()}
    assert "wtacrs::bit_relu" in names and "wtacrs::masked_grad" in names, sorted(n for n in names if "wtacrs" in n)


@pytest.mark.parametrize("direct", [False, True])
def test_differentiating_a_backward_fails_as_the_dispatcher_says(direct, monkeypatch):
    """The backward ops have no autograd formula: differentiating one (create_graph=True) is the
    dispatcher's error on either route, never a silently wrong second derivative."""
    monkeypatch.setattr(dispatch, "DIRECT", direct)
    x = torch.randn(4, 8, requires_grad=True)
    y = savers.BitReLU()(x * 1.0)
    (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="(?i)autograd"):
        gx.sum().backward()
