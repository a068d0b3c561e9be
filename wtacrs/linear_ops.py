"""A WTA-CRS layer's per-step work as three custom ops (`torch.library`).

The layer's arithmetic is a few dozen small tensor ops (norms, the sampling plan, a gather, a
scale, the gradient-norm update); each is a kernel launch and a trip through the dispatcher,
and a GPU step of a patched model was launch-bound on them. As custom ops they dispatch once
each: `sample_rows` draws the sample and gathers the kept rows, `linear` is the exact forward
(its autograd formula calls `linear_backward`), and `linear_backward` computes the input, weight
and bias gradients and folds ||dY_i|| into the layer's gradient-norm history. The implementations
are the PyTorch reference code; the fake implementations give shapes only, so FakeTensorMode and
torch.compile trace the layer without running it, and a saved-tensor hook still sees exactly what
`linear` saves for backward (the same tensors as before the ops existed: the profiler's byte
counts do not move). Autocast does not cast a custom op's inputs, so the layer hands `linear`
the copies autocast would have made.

On CUDA tensors `sample_rows` and the sampled weight gradient of `linear_backward` run fused
Triton kernels instead (`wtacrs.kernels`; `WTACRS_TRITON=0` turns them off); everywhere else,
and under a memory trace, the reference code below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels
from . import rows as row_sources
from .dispatch import call, register_autograd, register_cuda
from .estimator import sampling_plan
from .norms import running_factor, update_tracker


@torch.library.custom_op("wtacrs::sample_rows", mutates_args=())
def sample_rows(
    x: Tensor,
    tables: list[Tensor],
    factors: list[Tensor],
    u: Tensor | None,
    k: int,
    method: str,
    keep_rows: bool,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """k of x's flattened rows, p_i ∝ ||x_i|| * ||g_i||, g stacked over the running `tables` and
    the given `factors`: (int32 indices [k], fp32 scales [k], scaled rows [k, f] in `dtype`, or
    [0, f] without `keep_rows`)."""
    x2 = x.reshape(-1, x.shape[-1])
    weights = torch.linalg.vector_norm(x2, dim=1, dtype=torch.float32)  # no fp32 copy of a 16-bit x
    g = [running_factor(t, x.shape) for t in tables] + list(factors)
    if g:
        # the optimal weight for the stacked gradients [dY_q, dY_k, dY_v]: ||x_i|| * ||stacked dY_i||
        weights = weights * torch.sqrt(sum(f * f for f in g))
    idx, scale = sampling_plan(weights, k, method, u=u)
    if keep_rows:
        kept = (x2.index_select(0, idx).float() * scale.unsqueeze(1)).to(dtype)
    else:
        kept = x2.new_empty((0, x2.shape[1]), dtype=dtype)
    return idx.to(torch.int32), scale, kept


@register_cuda(sample_rows)
def _(x, tables, factors, u, k, method, keep_rows, dtype):
    args = (x, tables, factors, u, k, method, keep_rows, dtype)
    if dtype in kernels.DTYPES and kernels.use_triton(x, *tables, *factors, u):

        def fused():
            from .kernels import sampling

            return sampling.sample_rows(*args)

        return kernels.run("wtacrs::sample_rows", fused, lambda: sample_rows._init_fn(*args))
    return sample_rows._init_fn(*args)


@sample_rows.register_fake
def _(x, tables, factors, u, k, method, keep_rows, dtype):
    rows = k if keep_rows else 0
    return (
        x.new_empty(k, dtype=torch.int32),
        x.new_empty(k, dtype=torch.float32),
        x.new_empty((rows, x.shape[-1]), dtype=dtype),
    )


@torch.library.custom_op("wtacrs::linear", mutates_args=())
def linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    cast_weight: Tensor | None,
    cast_bias: Tensor | None,
    saved: list[Tensor],
    kept_as: str,
    transposed: bool,
    source: str,
    source_weight: Tensor | None,
    source_bias: Tensor | None,
    source_eps: float,
    source_dtype: torch.dtype | None,
    tracker: int,
    ids: Tensor | None,
) -> Tensor:
    """F.linear(x, weight, bias), run with the autocast copies `cast_*` where given. The other
    arguments are for backward: `saved` (kept_as "full": [x]; "rows": [idx, scaled rows]; "source":
    [idx, scale, *the row source's tensors]), the row source, and the gradient-norm tracker."""
    w = weight if cast_weight is None else cast_weight
    b = bias if cast_bias is None else cast_bias
    return F.linear(x, w.t() if transposed else w, b)


@linear.register_fake
def _(x, weight, bias, cast_weight, cast_bias, saved, kept_as, transposed, *rest):
    w = weight if cast_weight is None else cast_weight
    return x.new_empty((*x.shape[:-1], w.shape[1 if transposed else 0]))


def _setup_linear(ctx, inputs, output):
    x, weight, bias, _, _, saved, kept_as, transposed, source, sw, sb, eps, sdt, tracker, ids = inputs
    ctx.x_shape = list(x.shape)
    ctx.has_bias = bias is not None
    ctx.args = (kept_as, transposed, source, eps, sdt, tracker)
    ctx.held = (sw, sb, ids)  # parameters and the batch's example ids, not activations: never saved
    ctx.save_for_backward(weight, *saved)


def _linear_backward(ctx, grad):
    weight, *saved = ctx.saved_tensors
    kept_as, transposed, source, eps, sdt, tracker = ctx.args
    sw, sb, ids = ctx.held
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_b = ctx.has_bias and ctx.needs_input_grad[2]
    gx, gw, gb = call(
        linear_backward, grad, weight, saved, ctx.x_shape, need_x, need_w, need_b,
        kept_as, transposed, source, sw, sb, eps, sdt, tracker, ids,
    )  # fmt: skip
    grads = (gx if need_x else None, gw if need_w else None, gb if need_b else None, None, None)
    return grads + ([None] * len(saved),) + (None,) * 9


register_autograd(linear, _linear_backward, _setup_linear)


# The tracker's history is state outside the graph, as the RNG's is for torch.rand: named by a
# handle, not passed as a mutated argument, because torch.compile cannot partition a forward
# input that the backward mutates. Only the next forward's `sample_rows` reads it.
@torch.library.custom_op("wtacrs::linear_backward", mutates_args=())
def linear_backward(
    grad: Tensor,
    weight: Tensor,
    saved: list[Tensor],
    x_shape: list[int],
    need_x: bool,
    need_w: bool,
    need_b: bool,
    kept_as: str,
    transposed: bool,
    source: str,
    source_weight: Tensor | None,
    source_bias: Tensor | None,
    source_eps: float,
    source_dtype: torch.dtype | None,
    tracker: int,
    ids: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x exact, grad_w from the kept rows, grad_b exact), a gradient not needed as [0]; and
    ||dY_i|| folded into the history of the tracker with handle `tracker` (-1: none)."""
    return _backward(
        grad, weight, saved, x_shape, need_x, need_w, need_b, kept_as, transposed, source, source_weight,
        source_bias, source_eps, source_dtype, tracker, ids, fused=False,
    )  # fmt: skip


@register_cuda(linear_backward)
def _(
    grad, weight, saved, x_shape, need_x, need_w, need_b, kept_as, transposed, source, sw, sb, eps, sdt, tracker, ids
):
    args = (grad, weight, saved, x_shape, need_x, need_w, need_b, kept_as, transposed, source, sw, sb, eps, sdt, tracker, ids)  # fmt: skip
    if need_w and kept_as != "full" and kernels.use_triton(grad, weight, saved[-1] if kept_as == "rows" else None):
        # the tracker update is the last thing _backward does: a failure in the kernel comes before it
        return kernels.run(
            "wtacrs::linear_backward", lambda: _backward(*args, fused=True), lambda: _backward(*args, fused=False)
        )
    return _backward(*args, fused=False)


def _backward(
    grad, weight, saved, x_shape, need_x, need_w, need_b, kept_as, transposed, source, source_weight,
    source_bias, source_eps, source_dtype, tracker, ids, fused,
):  # fmt: skip
    """`linear_backward`; `fused`: the weight gradient of kept rows by the Triton matmul."""
    g2 = grad.reshape(-1, grad.shape[-1])
    gx, gw, gb = grad.new_empty(0), grad.new_empty(0), grad.new_empty(0)
    if need_x:
        w = weight.to(g2.dtype)
        gx = (g2 @ w.t() if transposed else g2 @ w).reshape(x_shape)
    if need_w and fused:
        gw = _fused_weight_grad(
            g2, weight, saved, kept_as, transposed, source, source_weight, source_bias, source_eps, source_dtype
        )
    elif need_w:
        if kept_as == "full":
            kept_g, kept_x = g2, saved[0].reshape(-1, x_shape[-1])
        elif kept_as == "rows":
            idx, kept_x = saved
            kept_g = g2.index_select(0, idx)
        else:
            idx, scale, *tensors = saved
            idx = idx.long()
            kept_g = g2.index_select(0, idx)
            rows = row_sources.recompute(source, tensors, idx, source_weight, source_bias, source_eps, source_dtype)
            kept_x = rows * scale.unsqueeze(1)
        kept_x = kept_x.to(g2.dtype)
        gw = (kept_x.t() @ kept_g if transposed else kept_g.t() @ kept_x).to(weight.dtype)
    if need_b:
        gb = g2.sum(0)
    if tracker >= 0:
        update_tracker(tracker, g2, x_shape, ids)
    return gx, gw, gb


def _fused_weight_grad(g2, weight, saved, kept_as, transposed, source, sw, sb, eps, sdt):
    from .kernels.weight_grad import weight_grad

    if kept_as == "rows":
        idx, rows = saved
        scale = None
    else:  # the source's rows are recomputed as in the reference; their scale is applied in the kernel
        idx, scale, *tensors = saved
        rows = row_sources.recompute(source, tensors, idx.long(), sw, sb, eps, sdt)
    if rows.dtype not in kernels.DTYPES:
        rows = rows.to(g2.dtype)
    return weight_grad(g2, idx, rows, scale, transposed, weight.dtype)


@linear_backward.register_fake
def _(grad, weight, saved, x_shape, need_x, need_w, need_b, *rest):
    return (
        grad.new_empty(x_shape if need_x else (0,)),
        weight.new_empty(weight.shape) if need_w else grad.new_empty(0),
        grad.new_empty((grad.shape[-1],) if need_b else (0,)),
    )
