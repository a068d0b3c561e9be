"""MEFT (wtacrs/meft.py): the reversible backward gives the gradients of ordinary backprop through
the same reversible model, keeps no per-layer activations, replays dropout, and starts from the
pre-trained model's function as closely as the construction allows."""

import copy

import pytest
import torch
import transformers

from tests.wtacrs.models import FAMILIES as REGISTRY
from tests.wtacrs.models import inputs, tiny
from wtacrs.meft import FAMILIES, MEFTConfig, apply_meft, meft_adapter_names, set_reversible
from wtacrs.memory import SavedTensorCounter

MEFT_FAMILIES = [f for f in ("bert", "roberta", "opt", "llama", "mistral", "qwen2", "gemma") if f in FAMILIES]
VARIANTS = ("meft1", "meft2", "meft3")


def _with_dropout(model, p=0.1):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
    for m in model.modules():  # attention and OPT call functional dropout with a float attribute
        for name, value in list(vars(m).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(m, name, p)
    return model


def _meft_model(family, variant, dtype=torch.float64, dropout=0.1, **kw):
    model = tiny(family).to(dtype)
    apply_meft(model, MEFTConfig(variant=variant, **kw))
    _with_dropout(model, dropout)  # the adapters' dropout too
    torch.manual_seed(7)
    with torch.no_grad():  # leave the zero start: every adapter weight gets a gradient
        for name, p in model.named_parameters():
            if ".meft_" in name and "up." in name:
                p.normal_(0, 0.05)
    return model


def _grads(model, batch, reversible, seed=3):
    set_reversible(model, reversible)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _max_rel(a, b):
    assert a.keys() == b.keys()
    return max(((a[n] - b[n]).norm() / b[n].norm().clamp_min(1e-300)).item() for n in b)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", MEFT_FAMILIES)
def test_reversible_gradients_equal_backprop_float64_with_dropout(family, variant):
    model = _meft_model(family, variant)
    batch = inputs(family)
    loss_r, rev = _grads(model, batch, True)
    loss_e, exact = _grads(model, batch, False)
    assert torch.equal(loss_r, loss_e)  # same dropout masks, same forward
    assert set(rev) == set(meft_adapter_names(model)) | {n for n in rev if ".meft_" not in n}
    assert any(".meft_" in n for n in rev) and all(g.abs().sum() > 0 for g in rev.values())
    assert _max_rel(rev, exact) < 1e-7  # rounding of float64, amplified by 1/lam, 1/beta per layer


@pytest.mark.parametrize("variant", VARIANTS)
def test_reversible_gradients_fp32_within_rounding(variant):
    model = _meft_model("bert", variant, dtype=torch.float32)
    batch = inputs("bert")
    _, rev = _grads(model, batch, True)
    _, exact = _grads(model, batch, False)
    # fp32 rounding of the reconstructed inputs, amplified by 1/lam and 1/beta (10x each) per layer
    assert _max_rel(rev, exact) < 2e-3


def test_bf16_reconstruction_error_is_measured_and_finite():
    """bf16 weights: the reconstruction error is what the paper reports as MEFT's limit; here it
    is measured (benchmarks/RESULTS.md records it for BERT-base) and must stay finite."""
    model = _meft_model("bert", "meft1", dtype=torch.bfloat16)
    batch = inputs("bert")
    _, rev = _grads(model, batch, True)
    _, exact = _grads(model, batch, False)
    err = _max_rel(rev, exact)
    assert err == err and err < 10  # finite: no blow-up on two layers


def test_global_rng_is_left_as_forward_left_it():
    model = _meft_model("bert", "meft1")
    batch = inputs("bert")
    torch.manual_seed(0)
    loss = model(**batch).loss
    after_forward = torch.get_rng_state()
    loss.backward()  # replays every layer's dropout from its recorded state, then restores
    assert torch.equal(torch.get_rng_state(), after_forward)


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_activation_is_kept_per_layer(variant):
    """Saved bytes do not grow with depth: the stack keeps its two top streams only."""
    saved = {}
    for layers in (2, 4):
        torch.manual_seed(0)
        record = REGISTRY["bert"]
        config = getattr(transformers, record.config_class)(**{**record.tiny, "num_hidden_layers": layers})
        model = getattr(transformers, record.head_class)(config).train()
        apply_meft(model, MEFTConfig(variant=variant))
        counter = SavedTensorCounter(model)
        with counter.track():
            loss = model(**inputs("bert")).loss
        loss.backward()
        saved[layers] = counter.total
    assert saved[2] == saved[4] > 0


def test_full_model_keeps_more_than_meft():
    full, meft = tiny("bert"), _meft_model("bert", "meft1", dtype=torch.float32)
    totals = []
    for model in (full, meft):
        counter = SavedTensorCounter(model)
        with counter.track():
            loss = model(**inputs("bert")).loss
        loss.backward()
        totals.append(counter.total)
    assert totals[1] < 0.3 * totals[0]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_starting_point(family, variant):
    """At init the adapters output 0; the stream carrying the layer outputs then differs from the
    pre-trained model only by the lam/beta skip terms, and converges to it as they go to 0."""
    base = tiny(family).eval()
    batch = {k: v for k, v in inputs(family).items() if k != "labels"}
    with torch.no_grad():
        want = base(**batch, output_hidden_states=True).hidden_states[-1]

    def deviation(readout, small):
        model = copy.deepcopy(base)
        kw = {"lam": 1e-4} if variant in ("meft1", "meft3") else {}
        kw |= {"beta": 1e-4} if variant in ("meft2", "meft3") else {}
        apply_meft(model, MEFTConfig(variant=variant, readout=readout, **(kw if small else {})))
        with torch.no_grad():
            got = model(**batch, output_hidden_states=True).hidden_states[-1]
        return ((got - want).norm() / want.norm()).item()

    assert deviation("last", small=True) < 1e-3  # the construction is the pre-trained model in the limit
    paper = deviation("mean", small=False)
    assert deviation("last", small=False) < 0.5 and paper < 1.0  # measured, finite (RESULTS.md: real MiniLM)


def test_only_adapters_and_head_train_and_t5_is_refused():
    model = _meft_model("bert", "meft3", dtype=torch.float32)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".meft_" in n or n.startswith("classifier.") for n in trainable)
    assert {n.split(".")[-2] for n in trainable if ".meft_" in n} == {"down", "up"}
    with pytest.raises(ValueError, match="MEFT supports"):
        apply_meft(tiny("t5"), MEFTConfig())
    with pytest.raises(ValueError, match="already applied"):
        apply_meft(model, MEFTConfig())
    with pytest.raises(ValueError, match="lam"):
        MEFTConfig(lam=0.0)


def test_eval_forward_matches_training_forward_without_dropout():
    model = _meft_model("bert", "meft2", dtype=torch.float32, dropout=0.0)
    batch = inputs("bert")
    out_train = model(**batch).logits
    with torch.no_grad():
        out_eval = model.eval()(**batch).logits
    torch.testing.assert_close(out_train.detach(), out_eval)
