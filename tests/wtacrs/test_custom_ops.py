"""Each `wtacrs::` custom op against `torch.library.opcheck` (schema, fake implementation,
autograd registration, AOT dispatch) and against the PyTorch reference it wraps."""

import pytest
import torch
import torch.nn.functional as F

from wtacrs import attention, dispatch, linear_ops, norm_layers, savers
from wtacrs.estimator import sampling_plan
from wtacrs.row_sources import RowSource

# random ops give other values on each run, which the AOT checks compare: those run without them
DETERMINISTIC_ONLY = ("test_schema", "test_autograd_registration", "test_faketensor")


def _x(*shape, dtype=torch.float32, grad=False):
    g = torch.Generator().manual_seed(sum(shape))
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(grad)


@pytest.mark.parametrize("method", ["wta", "crs", "topk"])
@pytest.mark.parametrize("keep_rows", [True, False])
def test_sample_rows(method, keep_rows):
    x, table, u = _x(2, 10, 8), _x(12).abs() + 0.1, torch.rand(6)
    args = (x, [table], [], u, 6, method, keep_rows, torch.bfloat16)
    torch.library.opcheck(linear_ops.sample_rows, args)
    idx, scale, kept = linear_ops.sample_rows(*args)
    g = table[:10].repeat(2)
    g = g + 0.2 * g.mean() + torch.finfo(torch.float32).tiny
    ref_idx, ref_scale = sampling_plan(torch.linalg.vector_norm(x.reshape(20, 8), dim=1) * g, 6, method, u=u)
    assert idx.dtype == torch.int32 and torch.equal(idx.long(), ref_idx)
    torch.testing.assert_close(scale, ref_scale)
    want = (x.reshape(20, 8)[ref_idx] * ref_scale[:, None]).bfloat16() if keep_rows else torch.empty(0, 8)
    torch.testing.assert_close(kept, want.bfloat16())


def _linear_args(kept_as, transposed=False):
    x, w, b = _x(2, 5, 8, grad=True), _x(4, 8, grad=True), _x(4, grad=True)
    if transposed:
        w = _x(8, 4, grad=True)
    idx = torch.tensor([0, 3, 7], dtype=torch.int32)
    source = ("", None, None, 0.0, None)
    if kept_as == "full":
        saved = [x]
    elif kept_as == "rows":
        saved = [idx, _x(3, 8)]
    else:
        ln_w, ln_b = _x(8, grad=True), _x(8, grad=True)
        saved = [idx, torch.rand(3) + 0.5, x]
        source = ("layernorm", ln_w, ln_b, 1e-5, None)
    return (x, w, b, None, None, saved, kept_as, transposed, *source, -1, None)


@pytest.mark.parametrize("kept_as", ["full", "rows", "source"])
@pytest.mark.parametrize("transposed", [False, True])
def test_linear_and_its_backward(kept_as, transposed):
    args = _linear_args(kept_as, transposed)
    torch.library.opcheck(linear_ops.linear, args)
    x, w, b, *_ = args
    y = linear_ops.linear(*args)
    torch.testing.assert_close(y, F.linear(x, w.t() if transposed else w, b))
    g = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), g)
    g2, saved = g.reshape(-1, 4), args[5]
    if kept_as == "full":
        rows, kept_g = x.reshape(-1, 8), g2
    elif kept_as == "rows":
        rows, kept_g = saved[1], g2[saved[0].long()]
    else:
        ln = F.layer_norm(x.reshape(-1, 8)[saved[0].long()], (8,), args[9], args[10], 1e-5)
        rows, kept_g = ln * saved[1][:, None], g2[saved[0].long()]
    ref_gw = rows.t() @ kept_g if transposed else kept_g.t() @ rows
    torch.testing.assert_close(gw, ref_gw)
    torch.testing.assert_close(gx, (g2 @ (w.t() if transposed else w)).reshape(x.shape))
    torch.testing.assert_close(gb, g2.sum(0))
    # a backward op has no backward of its own: its inputs are plain tensors
    plain = [t.detach() if isinstance(t, torch.Tensor) else t for t in args[8:]]
    saved_d = [t.detach() for t in saved]
    bwd = (g, w.detach(), saved_d, [2, 5, 8], True, True, True, kept_as, transposed, *plain)
    torch.library.opcheck(linear_ops.linear_backward, bwd)


def test_bit_dropout_relu_and_masked_grad():
    x = _x(3, 7, dtype=torch.float64, grad=True)
    torch.library.opcheck(savers.bit_dropout, (x, 0.0))  # p=0 draws but keeps all: deterministic
    torch.library.opcheck(savers.bit_dropout, (x, 0.4), test_utils=DETERMINISTIC_ONLY)
    torch.library.opcheck(savers.bit_relu, (x,))
    y, bits = savers.bit_relu(x)
    torch.testing.assert_close(y, torch.relu(x))
    assert torch.equal(savers.unpack_bits(bits, x.shape), x > 0)
    torch.library.opcheck(savers.masked_grad, (torch.randn(3, 7), bits, 2.0))
    torch.manual_seed(3)
    y, bits = savers.bit_dropout(x, 0.4)
    keep = savers.unpack_bits(bits, x.shape)
    torch.testing.assert_close(y, x * keep / 0.6)
    assert torch.autograd.gradcheck(lambda t: savers.bit_relu(t)[0], (x,))


@pytest.mark.parametrize("kind,approximate", [("gelu", "none"), ("gelu", "tanh"), ("silu", "none")])
@pytest.mark.parametrize("store", [torch.float16, None])
def test_compact_activation_ops(kind, approximate, store):
    z = _x(4, 6, grad=True)
    torch.library.opcheck(savers.compact_act, (z, kind, approximate, store))
    y, kept = savers.compact_act(z, kind, approximate, store)
    ref = F.silu(z) if kind == "silu" else F.gelu(z, approximate=approximate)
    torch.testing.assert_close(y, ref)
    assert kept.dtype == store if store is not None else kept.numel() == 0
    g = torch.randn(4, 6)
    torch.library.opcheck(savers.compact_act_backward, (g, z.detach().half(), kind, approximate))
    if store is None:
        (gz,) = torch.autograd.grad(y, z, g)
        torch.testing.assert_close(gz, torch.autograd.grad(ref, z, g)[0])


@pytest.mark.parametrize("style", ["t5", "llama", "gemma"])
def test_rms_norm_ops(style):
    x, w = _x(2, 3, 8, grad=True), _x(8, grad=True)
    torch.library.opcheck(norm_layers.rms_norm, (x, w, 1e-6, style))
    y, rstd = norm_layers.rms_norm(x, w, 1e-6, style)
    n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(y, n * (1 + w) if style == "gemma" else w * n)
    args = (torch.randn(2, 3, 8), x.detach(), rstd.detach(), w.detach(), style, True)
    torch.library.opcheck(norm_layers.rms_norm_backward, args)


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("with_bias", [False, True])
def test_attention_ops(p, with_bias):
    q, k, v = (_x(2, 4, 5, 8, dtype=torch.float64, grad=True) for _ in range(3))
    bias = _x(1, 4, 5, 5, dtype=torch.float64, grad=True) if with_bias else None
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    args = (q, k, v, mask, bias, 0.3, p, False, 1, torch.float64)
    utils = (
        DETERMINISTIC_ONLY
        if p > 0
        else ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    )
    torch.library.opcheck(attention.attention_op, args, test_utils=utils)
    out, lse, bits = attention.attention_op(*args)
    if p == 0.0:
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)
        torch.testing.assert_close(out, ref.transpose(1, 2))
    grads = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), mask, None if bias is None else bias.detach())
    bwd = (*grads, lse.detach(), bits, 0.3, p, False, 1, with_bias, "cpu", torch.bfloat16, False)
    torch.library.opcheck(attention.attention_backward_op, bwd)
    # as a model calls it: q/k/v are [B, L, H, D] projections viewed as [B, H, L, D]; the fake must
    # still give the contiguous gradients the op returns, or a compiled backward views them wrongly
    views = tuple(t.detach().transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not views[0].is_contiguous()
    torch.library.opcheck(attention.attention_backward_op, (grads[0], *views, *bwd[4:]))


def test_row_sources_are_plain_data():
    # a source crosses into the layer's backward op as arguments: a kind, tensors and scalars
    source = RowSource("rms:llama", (_x(2, 8), _x(2, 1)), _x(8))
    assert isinstance(source.kind, str) and all(isinstance(t, torch.Tensor) for t in source.tensors)


def test_every_op_has_a_reference_a_memory_tracer_can_run():
    import wtacrs

    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("wtacrs::")]
    assert len(names) >= 11, names
    for name in names:
        func = getattr(torch.ops.wtacrs, name.split("::")[1]).default
        assert callable(wtacrs.op_reference(func)), name
    assert wtacrs.op_reference(torch.ops.aten.mm.default) is None
    x, w = _x(3, 8), _x(8)
    ref = wtacrs.op_reference(torch.ops.wtacrs.rms_norm.default)
    for a, b in zip(ref(x, w, 1e-6, "llama"), norm_layers.rms_norm(x, w, 1e-6, "llama")):
        torch.testing.assert_close(a, b)


def test_the_traced_attention_is_the_op_run_op_by_op():
    # what the profiler's estimate runs on fake tensors, so that it sees the L x L intermediates
    q, k, v = (_x(2, 4, 5, 8, dtype=torch.float64, grad=True) for _ in range(3))
    bias = _x(1, 4, 5, 5, dtype=torch.float64, grad=True)
    args = (q, k, v, None, bias, 0.3, 0.0, True, 1, torch.float64)
    g = torch.randn(2, 5, 4, 8, dtype=torch.float64)
    traced = dispatch.function(attention.attention_op, "reference").apply(*args)[0]
    op = attention.attention_op(*args)[0]
    torch.testing.assert_close(traced, op)
    grads = [torch.autograd.grad(y, (q, k, v, bias), g) for y in (traced, op)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_the_fused_ops_have_cuda_kernels():
    # wtacrs.kernels: on CUDA tensors these run Triton kernels (the reference with WTACRS_TRITON=0
    # or without triton); the default implementation stays the one for every other device
    for name in ("sample_rows", "linear_backward", "bit_dropout", "bit_relu", "masked_grad"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"wtacrs::{name}", "CUDA"), name
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(f"wtacrs::{name}", "CPU"), name
