"""Calling the wtacrs custom ops: whole where something must see them whole, their implementation
directly in plain eager code, and their reference code op by op on fake tensors.

- Whole (`op(*args)`): under torch.compile (which keeps the op one node of its graph), under a
  TorchDispatchMode (an op or FLOP counter, a memory tracer on real tensors: they see the op as
  the one op, the few kernels, it is on a GPU) and with tensor subclasses (DTensor and the like
  dispatch the op themselves).
- Plain eager code: the op's implementation for the tensors' device (the Triton kernels on CUDA,
  the reference elsewhere) under an autograd.Function built from the op's own autograd formula.
  The same kernels, the same values, the same saved tensors; what is skipped is the dispatcher's
  Python layers around a custom op (argument defaults, pytree flattening, alias checks, the
  autograd wrapper): measured on a tiny model's step (host time, the GPU's launch-bound regime),
  that was about 40% of what WTA-CRS added to a step (benchmarks/RESULTS.md, "Host time per step").
- Fake tensors: the profiler's estimate counts storages at the dispatcher while tracing. Inside
  one custom op it would see the outputs only, not the intermediates the same code allocates on
  a real device (an fp32 copy of a 16-bit input, the L x L attention probabilities), and its peaks
  would come out low or at the wrong moment. So there each op runs its implementation as separate
  ops, under the same kind of autograd.Function: the CUDA one where the fake tensors stand for a
  CUDA device's (`kernels.modelled_cuda`: the kernels' wrappers, launching nothing), the
  reference code otherwise.

An op with many arguments has an argument spec: a NamedTuple whose fields are the op's parameters
in schema order (`arguments` checks that when the class is defined). A caller packs a call by
keyword, `call(op, *Spec(x=..., ...))`; the fake implementation, the CUDA implementation,
`setup_context` and the backward unpack by name, `Spec._make(args)` (and
`Spec._make(ctx.needs_input_grad)`); a backward returns `grads(Spec, x=..., ...)`, None for every
argument not named. A schema is flat (tensors, lists of tensors, scalars), so the spec is too.
"""

from __future__ import annotations

import functools
import sys

import torch
from torch._subclasses.fake_tensor import FakeTensor

_FORMULAS: dict = {}  # custom op -> (setup_context, backward)
_CUDA: dict = {}  # custom op -> its CUDA implementation (register_cuda)
_FUNCTIONS: dict = {}  # (custom op, "reference" | "cuda") -> its autograd.Function
SPECS: dict = {}  # custom op -> its argument spec (arguments)
_PLAIN = (torch.Tensor, torch.nn.Parameter)
# False: every call goes through the dispatcher, as under a dispatch mode (tests compare the two)
DIRECT = True


def register_autograd(op, backward, setup_context) -> None:
    op.register_autograd(backward, setup_context=setup_context)
    _FORMULAS[op] = (setup_context, backward)


def arguments(op):
    """Class decorator: the NamedTuple it decorates is `op`'s argument spec (module docstring). Its
    fields must be the op's parameters, names and order, or this raises: the two cannot drift."""

    def check(spec):
        names = tuple(a.name for a in op._opoverload._schema.arguments)
        if spec._fields != names:
            raise TypeError(f"{spec.__name__} has fields {spec._fields}; {op._opoverload} takes {names}")
        SPECS[op] = spec
        return spec

    return check


def grads(spec, **given) -> tuple:
    """What an autograd formula returns for an op with argument spec `spec`: the gradients `given`
    by argument name (a list of tensors' gradient: a list, of None where there is none) and None for
    every other argument. The padding comes from the spec, never from counting."""
    unknown = given.keys() - set(spec._fields)
    if unknown:
        raise TypeError(f"{spec.__name__} has no argument {sorted(unknown)}")
    return tuple(given.get(name) for name in spec._fields)


def register_cuda(op):
    """`op.register_kernel("cuda")`, and the same function for direct eager calls on CUDA tensors."""

    def inner(fn):
        op.register_kernel("cuda")(fn)
        _CUDA[op] = fn
        return fn

    return inner


def _route(args) -> str:
    """ "op", "fake", "cuda" or "reference" (see the module docstring); the ops take tensors, lists
    of tensors and scalars, so one level of lists is all there is to look through."""
    if torch.compiler.is_compiling():
        return "op"
    tensors = [t for a in args for t in (a if isinstance(a, list) else (a,)) if isinstance(t, torch.Tensor)]
    if any(isinstance(t, FakeTensor) for t in tensors):
        return "fake"
    if not DIRECT or torch._C._len_torch_dispatch_stack() or any(type(t) not in _PLAIN for t in tensors):
        return "op"
    return "cuda" if tensors and tensors[0].is_cuda else "reference"


def call(op, *args):
    """op(*args), where op is a `torch.library.custom_op`: whole, or its implementation directly
    (`_route`)."""
    route = _route(args)
    # fake tensors take the CUDA implementation too: it runs the reference unless they stand for a
    # CUDA device's (kernels.modelled_cuda), whose kernels it then models
    kind = "cuda" if route in ("cuda", "fake") and op in _CUDA else "reference"
    if route == "fake" and (op not in _FORMULAS or not torch.is_grad_enabled()):
        return _impl(op, kind)(*args)
    if route == "op" or (op not in _FORMULAS and torch.is_grad_enabled()):
        # an op without a formula (a backward's) with grad on, as in a double backward: the
        # dispatcher says it cannot be differentiated, where its code run directly would not
        return op(*args)
    if "torch._dynamo" in sys.modules:
        # never compiled on its own: where eager code runs inside a compiled region (a frame Dynamo
        # fell back on), Dynamo would otherwise trace these frames one by one, recompiling per op
        return _uncompiled()(op, kind, args)
    return _direct(op, kind, args)


def _impl(op, kind: str):
    return _CUDA[op] if kind == "cuda" else op._init_fn


def _direct(op, kind: str, args: tuple):
    impl = function(op, kind).apply if torch.is_grad_enabled() else _impl(op, kind)
    if torch.autograd.profiler._is_profiler_enabled:  # a trace names the op, as the dispatcher's would
        with torch.profiler.record_function(f"{op._namespace}::{op._name}"):
            return impl(*args)
    return impl(*args)


@functools.cache
def _uncompiled():
    return torch.compiler.disable(_direct)


def function(op, kind: str) -> type[torch.autograd.Function]:
    """The autograd.Function that runs `op`'s implementation (`kind`: "reference", its PyTorch code;
    "cuda", its CUDA implementation) with `op`'s autograd formula."""
    if (op, kind) not in _FUNCTIONS:
        setup, backward = _FORMULAS[op]
        impl = _impl(op, kind)

        def forward(ctx, *args):
            out = impl(*args)
            setup(ctx, args, out)
            return out

        def backward_fn(ctx, *grads):
            result = backward(ctx, *grads)
            result = result if isinstance(result, tuple) else (result,)
            # a list argument (tensors autograd does not track inside it) has one slot here
            return tuple(None if isinstance(g, list) else g for g in result)

        name = f"Direct_{op._namespace}_{op._name}_{kind}"
        # op_name: what a profiler names the saver (it is the op, run without the dispatcher)
        body = {
            "forward": staticmethod(forward),
            "backward": staticmethod(backward_fn),
            "op_name": f"{op._namespace}::{op._name}",
        }
        _FUNCTIONS[op, kind] = type(name, (torch.autograd.Function,), body)
    return _FUNCTIONS[op, kind]
