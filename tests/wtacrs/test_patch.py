import copy

import pytest
import torch

import wtacrs
from tests.wtacrs.models import TINY, inputs, tiny
from wtacrs.savers import BitDropout, CompactActivation

LAYER_ONLY = dict(
    share_inputs=False,
    reuse_saved_inputs=False,
    bit_masks=False,
    attention="unchanged",
    compact_activations=False,
    fused_norms=False,
)


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _max_rel_err(ref: dict, got: dict) -> float:
    scale = torch.sqrt(sum((g.double() ** 2).sum() for g in ref.values())).item()
    # Relative to each parameter's gradient, floored by the whole model's so that gradients that
    # are zero in exact arithmetic (e.g. a key bias under softmax) do not divide rounding noise by 1e-13.
    return max(((got[n] - g).norm() / (g.norm() + 1e-4 * scale)).item() for n, g in ref.items())


@pytest.mark.parametrize("family", sorted(TINY))
def test_every_family_patches_trains_and_unpatches(family):
    model = tiny(family)
    types_before = {n: type(m) for n, m in model.named_modules()}
    impl_before = model.config._attn_implementation
    wtacrs.apply_wtacrs(model, wtacrs.WTACRSConfig(ratio=0.3))
    layers = wtacrs.wtacrs_layers(model)
    assert len(layers) >= 8
    assert "method=wta, ratio=0.3" in repr(model)
    assert model.config._attn_implementation == "wtacrs_memeff"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = inputs(family)
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    for _, layer in layers:
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    # A layer whose gradient lives in a few rows (the last block under a [CLS] head) may get an
    # all-zero, still unbiased, estimate from one draw; the model as a whole may not.
    assert sum(layer.weight.grad.abs().sum() for _, layer in layers) > 0
    opt.step()
    wtacrs.remove_wtacrs(model)
    assert {n: type(m) for n, m in model.named_modules()} == types_before
    assert model.config._attn_implementation == impl_before
    assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("family", sorted(TINY))
def test_ratio_one_layer_only_is_bitwise_exact(family):
    ref = tiny(family).eval()  # eval: no dropout, so both runs see the same function
    patched = wtacrs.apply_wtacrs(copy.deepcopy(ref), wtacrs.WTACRSConfig(ratio=1.0, **LAYER_ONLY))
    batch = inputs(family)
    g_ref, g = _grads(ref, batch), _grads(patched, batch)
    assert g_ref.keys() == g.keys()
    for name in g_ref:
        assert torch.equal(g_ref[name], g[name]), name


@pytest.mark.parametrize("family", sorted(TINY))
def test_ratio_one_with_all_savers_matches_reference(family):
    ref = tiny(family).eval()
    patched = wtacrs.apply_wtacrs(copy.deepcopy(ref), wtacrs.WTACRSConfig(ratio=1.0))
    batch = inputs(family)
    # Companion savers are exact except compact GELU/SiLU storage (fp16 input: ~1e-4 relative).
    assert _max_rel_err(_grads(ref, batch), _grads(patched, batch)) < 1e-3


def test_layers_share_parameters_and_state_dict_keys():
    model = tiny("bert")
    params = {id(p) for p in model.parameters()}
    keys = set(model.state_dict())
    wtacrs.apply_wtacrs(model)
    assert {id(p) for p in model.parameters()} == params
    assert set(model.state_dict()) == keys


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_patched_model_is_the_only_owner_of_its_parameters(family):
    """While patched, what apply_wtacrs keeps for remove_wtacrs holds no Parameter: a wrapper that
    swaps the model's Parameters (FSDP's sharding, a quantizer, load_state_dict(assign=True)) swaps
    every reference there is, and remove_wtacrs hands back the Parameters the layers hold then."""
    from wtacrs.patch import _STATE

    model = tiny(family)
    wtacrs.apply_wtacrs(model, wtacrs.WTACRSConfig(ratio=0.3))
    kept = [old for _, old, _ in getattr(model, _STATE)["replaced"]]
    assert any(isinstance(old, torch.nn.Linear) for old in kept)
    assert all(p is None for old in kept for p in old._parameters.values())
    swapped = {}
    for name, module in model.named_modules():
        for pname, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[pname] = swapped[f"{name}.{pname}"] = torch.nn.Parameter(p.detach() + 1)
    wtacrs.remove_wtacrs(model)
    assert not any(isinstance(m, wtacrs.WTACRSLinear) for m in model.modules())
    assert {n: id(p) for n, p in model.named_parameters()} == {n: id(p) for n, p in swapped.items()}


def test_savers_are_installed_by_the_preset_and_can_be_turned_off():
    model = wtacrs.apply_wtacrs(tiny("bert"))
    assert any(isinstance(m, BitDropout) for m in model.modules())
    assert any(isinstance(m, CompactActivation) for m in model.modules())
    plain = wtacrs.apply_wtacrs(tiny("bert"), wtacrs.WTACRSConfig(**LAYER_ONLY))
    assert not any(isinstance(m, (BitDropout, CompactActivation)) for m in plain.modules())
    assert plain.config._attn_implementation != "wtacrs_memeff"


def test_errors_are_clear():
    model = tiny("bert")
    with pytest.raises(ValueError, match="matched no module"):
        wtacrs.apply_wtacrs(model, wtacrs.WTACRSConfig(target_modules=("query$", "nonexistent_proj$")))
    with pytest.raises(ValueError, match="no module matched"):
        wtacrs.apply_wtacrs(model, wtacrs.WTACRSConfig(target_modules=("nothing_here",)))
    with pytest.raises(ValueError, match="LayerNorm; WTA-CRS replaces nn.Linear"):
        wtacrs.apply_wtacrs(model, wtacrs.WTACRSConfig(target_modules=(r"attention\.output\.LayerNorm$",)))
    with pytest.raises(ValueError, match="not a valid regex"):
        wtacrs.apply_wtacrs(model, wtacrs.WTACRSConfig(target_modules=("(",)))
    with pytest.raises(ValueError, match="no default WTA-CRS targets for model_type=None"):
        wtacrs.apply_wtacrs(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="was not called"):
        wtacrs.remove_wtacrs(model)
    wtacrs.apply_wtacrs(model)
    with pytest.raises(ValueError, match="already applied"):
        wtacrs.apply_wtacrs(model)


def test_custom_targets_on_a_plain_module():
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    wtacrs.apply_wtacrs(net, wtacrs.WTACRSConfig(target_modules=(r"^0$",)))
    assert isinstance(net[0], wtacrs.WTACRSLinear) and isinstance(net[2], torch.nn.Linear)
    net(torch.randn(32, 8)).sum().backward()
    assert net[0].weight.grad is not None


def test_lora_composition_samples_lora_a_and_leaves_base_frozen():
    peft = pytest.importorskip("peft")
    model = tiny("bert")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["query", "value"], lora_dropout=0.0))
    wtacrs.apply_wtacrs(lora, wtacrs.WTACRSConfig(ratio=0.3))
    replaced = [n for n, _ in wtacrs.wtacrs_layers(lora)]
    assert replaced and all(".lora_A." in n for n in replaced)
    assert len(replaced) == 2 * 2  # query and value LoRA in each of 2 layers (others have no LoRA)
    out = lora(**inputs("bert"))
    out.loss.backward()
    for _, layer in wtacrs.wtacrs_layers(lora):
        assert layer.weight.grad is not None
    base = lora.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer
    assert isinstance(base, torch.nn.Linear) and base.weight.grad is None
    wtacrs.remove_wtacrs(lora)
    assert not wtacrs.wtacrs_layers(lora)


def test_lora_ratio_one_matches_plain_lora():
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig(r=4, target_modules=["query", "value"], lora_dropout=0.0, init_lora_weights=False)
    ref = peft.get_peft_model(tiny("bert"), cfg).eval()
    patched = wtacrs.apply_wtacrs(copy.deepcopy(ref), wtacrs.WTACRSConfig(ratio=1.0, **LAYER_ONLY))
    batch = inputs("bert")
    g_ref, g = _grads(ref, batch), _grads(patched, batch)
    assert g_ref.keys() == g.keys() and all(torch.equal(g_ref[n], g[n]) for n in g_ref)
