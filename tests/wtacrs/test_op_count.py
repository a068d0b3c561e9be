"""Dispatch cost of a training step, and the custom ops that keep it low.

On a GPU every dispatched op is at least one kernel launch plus dispatcher overhead, and a
profile of a patched model showed a launch-bound step; counting ops is the deterministic proxy
(../shared/checks/op_count.py counts the same way on larger models).
"""

import collections

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import wtacrs
from tests.wtacrs.models import inputs, tiny
from wtacrs import WTACRSConfig, WTACRSLinear
from wtacrs.families import FAMILIES

LIMIT = 1.3


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _step_ops(model, batch) -> collections.Counter:
    model(**batch).loss.backward()  # warm-up: lazy state (norm histories, masks) exists from here on
    count = _Count()
    with count:
        model(**batch).loss.backward()
    return count.ops


@pytest.mark.parametrize("family", sorted(FAMILIES))  # the bar is set on bert, t5 and llama
def test_a_patched_step_dispatches_at_most_1_3x_the_ops_of_full(family):
    batch = inputs(family, batch=4, seq=32)
    model = tiny(family)
    full = _step_ops(model, batch)
    wtacrs.apply_wtacrs(model, WTACRSConfig(ratio=0.3))
    patched = _step_ops(model, batch)
    ratio = sum(patched.values()) / sum(full.values())
    worst = sorted(patched, key=lambda op: full[op] - patched[op])[:8]
    assert ratio <= LIMIT, f"{ratio:.2f}x the ops of full; most added: {[(op, patched[op] - full[op]) for op in worst]}"


def test_a_sampled_layer_is_three_ops_per_step():
    layer = WTACRSLinear.from_linear(nn.Linear(16, 8), WTACRSConfig(ratio=0.3))
    x = torch.randn(4, 10, 16, requires_grad=True)
    layer(x).sum().backward()
    count = _Count()
    with count:
        y = layer(x)
    assert count.ops == {"wtacrs.sample_rows.default": 1, "wtacrs.linear.default": 1}
    g = torch.ones_like(y)
    with count:
        torch.autograd.grad(y, layer.weight, g)
    assert count.ops["wtacrs.linear_backward.default"] == 1


def _compiled_step(layer, x, g, seed):
    torch.manual_seed(seed)
    y = layer(x)
    return (y, *torch.autograd.grad(y, (x, layer.weight, layer.bias), g))


@pytest.mark.parametrize("norm_source", ["running", "activation"])
def test_a_layer_compiles_with_fullgraph(norm_source):
    if not hasattr(torch, "compile"):
        pytest.skip("this torch has no torch.compile")
    lin = nn.Linear(16, 8)
    eager = WTACRSLinear.from_linear(lin, WTACRSConfig(ratio=0.3, norm_source=norm_source))
    twin = WTACRSLinear.from_linear(nn.Linear(16, 8), WTACRSConfig(ratio=0.3, norm_source=norm_source))
    twin.load_state_dict(eager.state_dict())
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 10, 16, requires_grad=True)
    g = torch.randn(4, 10, 8)
    for seed in (1, 2):  # the second step samples with the history the first one left
        want = _compiled_step(eager, x, g, seed)
        got = _compiled_step(compiled, x, g, seed)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    if norm_source == "running":
        torch.testing.assert_close(twin.norm_history.table, eager.norm_history.table)
        assert bool(twin.norm_history.started)


def test_ratio_one_stays_exact_when_compiled():
    if not hasattr(torch, "compile"):
        pytest.skip("this torch has no torch.compile")
    ref = nn.Linear(16, 8)
    layer = WTACRSLinear.from_linear(nn.Linear(16, 8), WTACRSConfig(ratio=1.0))
    layer.load_state_dict(ref.state_dict())
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 5, 16, requires_grad=True)
    g = torch.randn(3, 5, 8)
    got = torch.autograd.grad(compiled(x), (x, layer.weight, layer.bias), g)
    want = torch.autograd.grad(ref(x), (x, ref.weight, ref.bias), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
