"""Every family x every dtype users train in, with the recommended preset and with LoRA on top:
a training step with finite gradients, and at ratio 1.0 gradients as close to the exact (fp32,
unpatched) ones as the unpatched model's in the same dtype are. (A bf16 test on one tiny BERT
once hid a LLaMA crash under autocast.)"""

import contextlib

import pytest
import torch

import wtacrs
from tests.wtacrs.models import TINY, inputs, tiny
from wtacrs.patch import _attention_configs

DTYPES = {  # name -> (autocast dtype or None, weight dtype, rounding error allowed beyond the unpatched model's)
    "bf16-autocast": (torch.bfloat16, torch.float32, 2**-8),
    "fp16-autocast": (torch.float16, torch.float32, 2**-11),
    "bf16-weights": (None, torch.bfloat16, 2**-8),
}


def _grads(model):
    return {n.replace(".base_layer", ""): p.grad.float() for n, p in model.named_parameters() if p.grad is not None}


def _step(model, family, autocast_dtype):
    context = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with context:
        loss = model(**inputs(family)).loss
    loss.backward()
    return loss.float().item()


def _model(family, weights, lora, attention="sdpa"):
    model = tiny(family).to(weights)
    model.set_attn_implementation(attention)
    for config in _attention_configs(model):  # T5's stacks hold their own config copies
        config._attn_implementation = attention
    if lora:
        peft = pytest.importorskip("peft")
        torch.manual_seed(1)  # the same adapters in every copy; nonzero B, so A has a gradient
        config = peft.LoraConfig(r=4, lora_dropout=0.0, init_lora_weights=False)  # peft's targets per family
        model = peft.get_peft_model(model, config)
    return model


@pytest.mark.parametrize("lora", [False, True], ids=["preset", "lora+preset"])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("family", sorted(TINY))
def test_a_step_in_every_dtype(family, dtype, lora, request):
    if family == "t5" and dtype == "bf16-weights" and not lora:
        # Known gap, left visible: with bf16 weights T5's decoder gradients under the preset's
        # attention are 1.8x (median) to 3.6x eager's error against fp32 (0.060 vs 0.019 on the
        # worst layer), though every attention output in the forward is as close as eager's.
        # Strict: the day it holds, this xfail fails and comes out.
        request.applymarker(pytest.mark.xfail(strict=True, reason="T5 bf16-weights decoder gradients, see comment"))
    autocast_dtype, weights, eps = DTYPES[dtype]
    exact = _model(family, torch.float32, lora).eval()  # eval: no dropout, the same function each time
    patched = _model(family, weights, lora).eval()
    wtacrs.apply_wtacrs(patched, wtacrs.WTACRSConfig(ratio=1.0))
    _step(exact, family, None)
    _step(patched, family, autocast_dtype)
    # the unpatched model in the same dtype, with either attention a user may run: eager rounds
    # like the preset's attention (and a GPU's fused kernels) do; the CPU's SDPA keeps more bits
    references = []
    for attention in ("sdpa", "eager"):
        references.append(_model(family, weights, lora, attention).eval())
        _step(references[-1], family, autocast_dtype)
    truth, got, refs = _grads(exact), _grads(patched), [_grads(r) for r in references]
    assert truth and all(got.keys() == r.keys() == truth.keys() for r in refs)
    largest = max(g.norm() for g in truth.values())
    for name, g in got.items():
        assert torch.isfinite(g).all(), name
        scale = truth[name].norm()
        if scale < 1e-4 * largest:  # zero in exact arithmetic (e.g. a key bias under softmax)
            continue
        ours = (g - truth[name]).norm() / scale
        theirs = max((r[name] - truth[name]).norm() / scale for r in refs)
        assert ours <= 2 * theirs + 4 * eps, f"{name}: error {ours:.3g} vs unpatched {theirs:.3g} in {dtype}"

    sampled = _model(family, weights, lora).train()
    wtacrs.apply_wtacrs(sampled, wtacrs.WTACRSConfig(ratio=0.3))
    assert torch.isfinite(torch.tensor(_step(sampled, family, autocast_dtype)))
    grads = [p.grad for p in sampled.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
