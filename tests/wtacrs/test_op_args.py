"""The custom ops' argument specs (`wtacrs.dispatch.arguments`): one NamedTuple per op with many
arguments, its fields the op's parameters in schema order, and a backward's padding derived from it."""

from typing import NamedTuple

import pytest
import torch
from torch import Tensor

import wtacrs.patch  # noqa: F401 (imports every module that defines an op)
from wtacrs import attention, dispatch, linear_ops, norm_layers

MANY = 5  # an op with more arguments than this has a spec


def test_every_op_with_many_arguments_has_a_spec_matching_its_schema():
    specs = {op._opoverload.name(): spec for op, spec in dispatch.SPECS.items()}
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("wtacrs::")]
    for name in names:
        schema = getattr(torch.ops.wtacrs, name.split("::")[1]).default._schema
        params = tuple(a.name for a in schema.arguments)
        if len(params) > MANY:
            assert name in specs, f"{name} takes {len(params)} arguments and has no spec"
        if name in specs:
            assert specs[name]._fields == params, name
    assert {"wtacrs::linear", "wtacrs::linear_backward", "wtacrs::sample_rows"} <= specs.keys()
    assert {"wtacrs::memeff_attention", "wtacrs::memeff_attention_backward"} <= specs.keys()


def test_a_spec_that_drifts_from_its_op_is_refused():
    with pytest.raises(TypeError, match="RmsNormArgs|Swapped"):

        @dispatch.arguments(norm_layers.rms_norm)
        class Swapped(NamedTuple):  # eps and weight in the wrong order
            x: Tensor
            eps: float
            weight: Tensor
            style: str


def test_a_backward_is_padded_from_the_spec():
    g = dispatch.grads(linear_ops.LinearArgs, x="gx", bias="gb", saved=[None, None])
    assert len(g) == len(linear_ops.LinearArgs._fields)
    named = dict(zip(linear_ops.LinearArgs._fields, g))
    assert named.pop("x") == "gx" and named.pop("bias") == "gb" and named.pop("saved") == [None, None]
    assert all(v is None for v in named.values())
    assert dispatch.grads(attention.AttentionArgs) == (None,) * len(attention.AttentionArgs._fields)
    with pytest.raises(TypeError, match="no argument"):
        dispatch.grads(linear_ops.LinearArgs, input="gx")


def test_a_call_packed_by_keyword_is_the_positional_call():
    x, w = torch.randn(2, 3, 8), torch.randn(4, 8)
    args = linear_ops.LinearArgs(
        x=x, weight=w, bias=None, cast_weight=None, cast_bias=None, saved=[x], kept_as="full", transposed=False,
        **linear_ops.source_args(None), norm_history=-1, ids=None,
    )  # fmt: skip
    assert linear_ops.LinearArgs._make(tuple(args)) == args
    torch.testing.assert_close(linear_ops.linear(*args), torch.nn.functional.linear(x, w))
