"""Calling the wtacrs custom ops: one dispatch each, or, in a trace on fake tensors, their
reference code op by op.

The profiler's estimate counts storages at the dispatcher while tracing on fake tensors. Inside
one custom op it would see the outputs only, not the intermediates that the same code allocates
on a real device (an fp32 copy of a 16-bit input, the L x L attention probabilities), and its
peaks would come out low or at the wrong moment. So on fake tensors each op runs its PyTorch
implementation as separate ops, under an autograd.Function built from the op's own autograd
formula: the same values, the same saved tensors. Everywhere else (and under torch.compile,
which traces on fake tensors too but must keep the op whole) it is one op.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._pytree import tree_flatten

_FORMULAS: dict = {}  # custom op -> (setup_context, backward)
_TRACED: dict = {}  # custom op -> its autograd.Function for fake tensors


def register_autograd(op, backward, setup_context) -> None:
    op.register_autograd(backward, setup_context=setup_context)
    _FORMULAS[op] = (setup_context, backward)


def _on_fake(args) -> bool:
    if torch.compiler.is_compiling():
        return False
    return any(isinstance(t, FakeTensor) for t in tree_flatten(args)[0])


def call(op, *args):
    """op(*args), where op is a `torch.library.custom_op`; its reference code op by op on fake tensors."""
    if not _on_fake(args):
        return op(*args)
    if op not in _FORMULAS or not torch.is_grad_enabled():
        return op._init_fn(*args)
    return traced(op).apply(*args)


def traced(op) -> type[torch.autograd.Function]:
    """The autograd.Function that runs `op`'s reference code with `op`'s autograd formula."""
    if op not in _TRACED:
        setup, backward = _FORMULAS[op]

        def forward(ctx, *args):
            out = op._init_fn(*args)
            setup(ctx, args, out)
            return out

        def backward_fn(ctx, *grads):
            result = backward(ctx, *grads)
            result = result if isinstance(result, tuple) else (result,)
            # a list argument (tensors autograd does not track inside it) has one slot here
            return tuple(None if isinstance(g, list) else g for g in result)

        name = f"Traced_{op._name.replace('::', '_')}"
        # op_name: what a profiler names the saver (it is the op, run op by op)
        body = {
            "forward": staticmethod(forward),
            "backward": staticmethod(backward_fn),
            "op_name": f"{op._namespace}::{op._name}",
        }
        _TRACED[op] = type(name, (torch.autograd.Function,), body)
    return _TRACED[op]
