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

Each op's arguments have a spec (`SampleRowsArgs`, `LinearArgs`, `LinearBackwardArgs`: NamedTuples
whose fields are the op's parameters, `dispatch.arguments`): the layer packs a call by keyword, and
the fake and CUDA implementations, `setup_context` and the backward read the arguments by name.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels, row_sources
from .dispatch import arguments, call, grads, register_autograd, register_cuda
from .estimator import sampling_plan
from .grad_norm_history import running_factor, update_norm_history


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


@arguments(sample_rows)
class SampleRowsArgs(NamedTuple):
    x: Tensor
    tables: list[Tensor]  # running gradient-norm tables, turned into g inside the op
    factors: list[Tensor]  # g for each flattened row, already computed
    u: Tensor | None  # k uniform draws (a layer's own generator), or None: torch's
    k: int
    method: str  # "wta", "crs" or "topk"
    keep_rows: bool  # False: the kept rows come from a row source, only indices are kept
    dtype: torch.dtype  # of the kept rows


@register_cuda(sample_rows)
def _(*args):
    a = SampleRowsArgs._make(args)
    if a.dtype in kernels.DTYPES and kernels.use_triton(a.x, *a.tables, *a.factors, a.u):

        def fused():
            from .kernels import sampling

            return sampling.sample_rows(*args)

        return kernels.run("wtacrs::sample_rows", fused, lambda: sample_rows._init_fn(*args))
    return sample_rows._init_fn(*args)


@sample_rows.register_fake
def _(*args):
    a = SampleRowsArgs._make(args)
    return (
        a.x.new_empty(a.k, dtype=torch.int32),
        a.x.new_empty(a.k, dtype=torch.float32),
        a.x.new_empty((a.k if a.keep_rows else 0, a.x.shape[-1]), dtype=a.dtype),
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
    norm_history: int,
    ids: Tensor | None,
) -> Tensor:
    """F.linear(x, weight, bias), run with the autocast copies `cast_*` where given. The other
    arguments are for backward: `saved` (kept_as "full": [x]; "rows": [idx, scaled rows]; "source":
    [idx, scale, *the row source's tensors]), the row source, the gradient-norm history and the
    batch's example ids (`LinearArgs`)."""
    w = weight if cast_weight is None else cast_weight
    b = bias if cast_bias is None else cast_bias
    return F.linear(x, w.t() if transposed else w, b)


@arguments(linear)
class LinearArgs(NamedTuple):
    x: Tensor  # the input, autocast's copy where autocast would make one
    weight: Tensor
    bias: Tensor | None
    cast_weight: Tensor | None  # autocast's copies of weight and bias, or None
    cast_bias: Tensor | None
    saved: list[Tensor]  # what backward keeps, by kept_as (see `linear`)
    kept_as: str  # "full", "rows" or "source"
    transposed: bool  # weight is [in, out] (Hugging Face Conv1D)
    source: str  # the row source's kind ("" without one) and its parameters (`source_args`)
    source_weight: Tensor | None
    source_bias: Tensor | None
    source_eps: float
    source_dtype: torch.dtype | None
    norm_history: int  # the gradient-norm history's handle (-1: none)
    ids: Tensor | None  # the batch's example ids, for norm_source="example"


def source_args(source: row_sources.RowSource | None) -> dict:
    """The row source's fields of `LinearArgs` and `LinearBackwardArgs` (its tensors go in `saved`)."""
    if source is None:
        return dict(source="", source_weight=None, source_bias=None, source_eps=0.0, source_dtype=None)
    return dict(
        source=source.kind, source_weight=source.weight, source_bias=source.bias, source_eps=source.eps,
        source_dtype=source.dtype,
    )  # fmt: skip


@linear.register_fake
def _(*args):
    a = LinearArgs._make(args)
    w = a.weight if a.cast_weight is None else a.cast_weight
    return a.x.new_empty((*a.x.shape[:-1], w.shape[1 if a.transposed else 0]))


# the arguments backward passes on to `linear_backward` as the forward had them: scalars, the row
# source's parameters and the example ids, none of them an activation, so held on ctx, never saved
_PASSED_ON = (
    "kept_as", "transposed", "source", "source_weight", "source_bias", "source_eps", "source_dtype", "norm_history", "ids",
)  # fmt: skip


def _setup_linear(ctx, inputs, output):
    a = LinearArgs._make(inputs)
    ctx.x_shape = list(a.x.shape)
    ctx.has_bias = a.bias is not None
    ctx.passed_on = {name: getattr(a, name) for name in _PASSED_ON}
    ctx.save_for_backward(a.weight, *a.saved)


def _linear_backward(ctx, grad):
    weight, *saved = ctx.saved_tensors
    need = LinearArgs._make(ctx.needs_input_grad)
    need_b = ctx.has_bias and need.bias
    args = LinearBackwardArgs(
        grad=grad, weight=weight, saved=saved, x_shape=ctx.x_shape, need_x=need.x, need_w=need.weight, need_b=need_b,
        **ctx.passed_on,
    )  # fmt: skip
    gx, gw, gb = call(linear_backward, *args)
    return grads(
        LinearArgs, x=gx if need.x else None, weight=gw if need.weight else None, bias=gb if need_b else None,
        saved=[None] * len(saved),
    )  # fmt: skip


register_autograd(linear, _linear_backward, _setup_linear)


# The gradient-norm history is state outside the graph, as the RNG's is for torch.rand: named by a
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
    norm_history: int,
    ids: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x exact, grad_w from the kept rows, grad_b exact), a gradient not needed as [0]; and
    ||dY_i|| folded into the gradient-norm history with handle `norm_history` (-1: none)."""
    return _backward(
        grad, weight, saved, x_shape, need_x, need_w, need_b, kept_as, transposed, source, source_weight,
        source_bias, source_eps, source_dtype, norm_history, ids, fused=False,
    )  # fmt: skip


@arguments(linear_backward)
class LinearBackwardArgs(NamedTuple):
    grad: Tensor  # dY
    weight: Tensor
    saved: list[Tensor]  # `LinearArgs.saved`, as ctx.saved_tensors gives it back
    x_shape: list[int]
    need_x: bool  # which gradients to compute (one not needed comes back as [0])
    need_w: bool
    need_b: bool
    kept_as: str  # this and the rest: `LinearArgs`' fields of the same names
    transposed: bool
    source: str
    source_weight: Tensor | None
    source_bias: Tensor | None
    source_eps: float
    source_dtype: torch.dtype | None
    norm_history: int
    ids: Tensor | None


@register_cuda(linear_backward)
def _(*args):
    a = LinearBackwardArgs._make(args)
    rows = a.saved[-1] if a.kept_as == "rows" else None
    if a.need_w and a.kept_as != "full" and kernels.use_triton(a.grad, a.weight, rows):
        # the norm-history update is the last thing _backward does: a failure in the kernel comes before it
        return kernels.run(
            "wtacrs::linear_backward", lambda: _backward(*args, fused=True), lambda: _backward(*args, fused=False)
        )
    return _backward(*args, fused=False)


def _backward(*args, fused: bool):
    """`linear_backward` (args: `LinearBackwardArgs`); `fused`: the weight gradient of kept rows by
    the Triton matmul."""
    a = LinearBackwardArgs._make(args)
    g2 = a.grad.reshape(-1, a.grad.shape[-1])
    gx, gw, gb = a.grad.new_empty(0), a.grad.new_empty(0), a.grad.new_empty(0)
    if a.need_x:
        w = a.weight.to(g2.dtype)
        gx = (g2 @ w.t() if a.transposed else g2 @ w).reshape(a.x_shape)
    if a.need_w and fused:
        gw = _fused_weight_grad(g2, a)
    elif a.need_w:
        if a.kept_as == "full":
            kept_g, kept_x = g2, a.saved[0].reshape(-1, a.x_shape[-1])
        elif a.kept_as == "rows":
            idx, kept_x = a.saved
            kept_g = g2.index_select(0, idx)
        else:
            idx, scale, *tensors = a.saved
            idx = idx.long()
            kept_g = g2.index_select(0, idx)
            kept_x = _source_rows(a, tensors, idx) * scale.unsqueeze(1)
        kept_x = kept_x.to(g2.dtype)
        gw = (kept_x.t() @ kept_g if a.transposed else kept_g.t() @ kept_x).to(a.weight.dtype)
    if a.need_b:
        gb = g2.sum(0)
    if a.norm_history >= 0:
        update_norm_history(a.norm_history, g2, a.x_shape, a.ids)
    return gx, gw, gb


def _source_rows(a: LinearBackwardArgs, tensors: list[Tensor], idx: Tensor) -> Tensor:
    """Rows `idx` (int64) of the row source's output, recomputed from its `tensors`."""
    return row_sources.recompute(a.source, tensors, idx, a.source_weight, a.source_bias, a.source_eps, a.source_dtype)


def _fused_weight_grad(g2: Tensor, a: LinearBackwardArgs) -> Tensor:
    from .kernels.weight_grad import weight_grad

    if a.kept_as == "rows":
        idx, rows = a.saved
        scale = None
    else:  # the source's rows are recomputed as in the reference; their scale is applied in the kernel
        idx, scale, *tensors = a.saved
        rows = _source_rows(a, tensors, idx.long())
    if rows.dtype not in kernels.DTYPES:
        rows = rows.to(g2.dtype)
    return weight_grad(g2, idx, rows, scale, a.transposed, a.weight.dtype)


@linear_backward.register_fake
def _(*args):
    a = LinearBackwardArgs._make(args)
    return (
        a.grad.new_empty(a.x_shape if a.need_x else (0,)),
        a.weight.new_empty(a.weight.shape) if a.need_w else a.grad.new_empty(0),
        a.grad.new_empty((a.grad.shape[-1],) if a.need_b else (0,)),
    )
