"""The preset's memory-efficient attention reaches every attention module, seq2seq stacks included:
T5's encoder and decoder hold their own config copies, which the top model's
set_attn_implementation did not reach, so T5 kept SDPA's math path (its L x L probabilities were
59% of lora+wtacrs@0.1's saved bytes on T5-Base) until this was caught by memory attribution."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import wtacrs
from wtacrs import attention

from .models import TINY, inputs, tiny


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _configs(model):
    modules = model.named_modules()
    return {
        n: m.config._attn_implementation
        for n, m in modules
        if hasattr(getattr(m, "config", None), "_attn_implementation")
    }


@pytest.mark.parametrize("family", sorted(TINY))
def test_every_attention_config_is_switched_and_restored(family):
    model = tiny(family)
    before = _configs(model)
    wtacrs.apply_wtacrs(model, wtacrs.WTACRSConfig(ratio=0.3))
    assert set(_configs(model).values()) == {attention.NAME}, _configs(model)
    wtacrs.remove_wtacrs(model)
    assert _configs(model) == before


def test_t5_self_and_cross_attention_run_the_memory_efficient_op():
    model = tiny("t5")
    wtacrs.apply_wtacrs(model, wtacrs.WTACRSConfig(ratio=0.3))
    ops = _Ops()
    with ops:
        model(**inputs("t5")).loss.backward()
    layers = 2  # the tiny config's encoder and decoder layers
    # encoder self, decoder self and decoder cross attention, forward and backward
    assert ops.names.count("wtacrs.memeff_attention") == 3 * layers, sorted(set(ops.names))
    assert ops.names.count("wtacrs.memeff_attention_backward") == 3 * layers
    assert "aten._softmax" not in ops.names  # no probabilities materialised


def test_t5_matches_the_unpatched_model_at_ratio_one():
    reference, patched = tiny("t5"), tiny("t5")
    wtacrs.apply_wtacrs(patched, wtacrs.WTACRSConfig(ratio=1.0))
    for model in (reference, patched):
        model.eval()  # dropout off: the same function
        model(**inputs("t5")).loss.backward()
    for (name, p), q in zip(reference.named_parameters(), patched.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
