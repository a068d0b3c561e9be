"""apply_wtacrs / remove_wtacrs: patch a Hugging Face (or any) model in place."""

from __future__ import annotations

import re

import torch
from torch import nn

from . import attention
from .config import WTACRSConfig
from .families import ACTIVATIONS, FAMILIES, RMSNORM_STYLES
from .layer import WTACRSLinear
from .norm_layers import FusedRMSNorm, mark_layernorm_output
from .savers import BitDropout, BitReLU, CompactActivation

# model_type -> regexes (re.search on the module name) of the linear layers to replace
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {name: family.targets for name, family in FAMILIES.items()}

_STATE = "_wtacrs_state"


def _model_type(model: nn.Module) -> str | None:
    for module in model.modules():
        config = getattr(module, "config", None)
        model_type = getattr(config, "model_type", None)
        if isinstance(model_type, str):
            return model_type
    return None


def _replace(model: nn.Module, name: str, new: nn.Module, state: dict) -> None:
    """Put `new` at `name`, keeping the module it replaces for remove_wtacrs without the Parameters
    `new` took over: kept, they would be a second owner that a wrapper swapping parameters (FSDP's
    sharding, `swap_tensors`, a quantizer) never sees, holding the unsharded weight alive for the run."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    taken = {id(p): pname for pname, p in new._parameters.items() if p is not None}
    moved = [(pname, taken[id(p)]) for pname, p in old._parameters.items() if p is not None and id(p) in taken]
    for pname, _ in moved:
        old._parameters[pname] = None
    state["replaced"].append((name, old, moved))
    setattr(parent, child, new)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _targets(model: nn.Module, config: WTACRSConfig) -> list[tuple[str, nn.Module]]:
    model_type = _model_type(model)
    patterns = config.target_modules
    if patterns is None:
        if model_type not in DEFAULT_TARGETS:
            raise ValueError(
                f"no default WTA-CRS targets for model_type={model_type!r}; known types: {sorted(DEFAULT_TARGETS)}. "
                "Pass WTACRSConfig(target_modules=[regex, ...]) to choose layers yourself."
            )
        patterns = DEFAULT_TARGETS[model_type]
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"target_modules entry {pattern!r} is not a valid regex: {err}") from None
    hits: dict[str, list[str]] = {p.pattern: [] for p in compiled}
    found: list[tuple[str, nn.Module]] = []
    frozen: list[str] = []
    for name, module in model.named_modules():
        matching = [p for p in compiled if p.search(name)]
        if not matching or isinstance(module, WTACRSLinear):
            continue
        for p in matching:
            hits[p.pattern].append(name)
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and len(lora_a):
            found.extend((f"{name}.lora_A.{key}", sub) for key, sub in lora_a.items())
        elif _is_linear(module) and not module.weight.requires_grad:
            frozen.append(name)  # no weight gradient, so autograd keeps no input for it anyway
        elif _is_linear(module):
            found.append((name, module))
        else:
            raise ValueError(
                f"target {name!r} is a {type(module).__name__}; WTA-CRS replaces nn.Linear, Hugging Face Conv1D "
                "and peft LoRA layers (their lora_A)"
            )
    linears = [n for n, m in model.named_modules() if _is_linear(m)]
    if not found and frozen:
        raise ValueError(
            f"every layer matching target_modules={list(patterns)} is frozen ({frozen[:4]}...): nothing to sample"
        )
    if not found:
        raise ValueError(
            f"no module matched target_modules={list(patterns)} (model_type={model_type!r}); "
            f"linear layers here include {linears[:8]}"
        )
    if config.target_modules is not None:
        missing = [p for p, names in hits.items() if not names]
        if missing:
            raise ValueError(
                f"target_modules entries {missing} matched no module; linear layers here include {linears[:8]}"
            )
    return found


def _transformers_model(model: nn.Module):
    for module in model.modules():
        if hasattr(module, "set_attn_implementation") and hasattr(
            getattr(module, "config", None), "_attn_implementation"
        ):
            return module
    return None


def _attention_configs(model: nn.Module) -> list:
    """Every config an attention module reads. A seq2seq model's stacks hold their own copies (T5's
    encoder and decoder deep-copy the top config), which `set_attn_implementation` on the top model
    does not reach: without this T5 kept SDPA's math path and its L x L probabilities."""
    configs = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            configs[id(config)] = config
    return list(configs.values())


def _advance(counter: list[int]) -> None:
    counter[0] += 1


def apply_wtacrs(model: nn.Module, config: WTACRSConfig | None = None) -> nn.Module:
    """Replace the target linear layers (and, per config, the companion operators) in place.

    Targets come from config.target_modules or the default table for the model type; frozen
    linear layers are left alone (no weight gradient, so autograd keeps no input for them), and
    on a peft LoRA model the trainable lora_A layers are the ones replaced.
    """
    config = config or WTACRSConfig()
    if not isinstance(config, WTACRSConfig):
        raise ValueError(f"config must be a WTACRSConfig, got {type(config).__name__}")
    if hasattr(model, _STATE):
        raise ValueError("apply_wtacrs was already applied to this model; call remove_wtacrs(model) first")
    targets = _targets(model, config)
    state: dict = {"replaced": [], "hooks": [], "attn": None, "config": config}
    forward_count = [0]
    for name, linear in targets:
        layer = WTACRSLinear.from_linear(linear, config)
        layer.forward_count = forward_count
        _replace(model, name, layer, state)
    state["hooks"].append(model.register_forward_pre_hook(lambda *_: _advance(forward_count)))
    for name, module in list(model.named_modules()):
        kind = type(module)
        if config.bit_masks and kind is nn.Dropout:
            _replace(model, name, BitDropout(module.p).train(module.training), state)
        elif config.bit_masks and kind is nn.ReLU:
            _replace(model, name, BitReLU(), state)
        elif config.compact_activations and kind.__name__ in ACTIVATIONS:
            act, approx = ACTIVATIONS[kind.__name__]
            if kind is nn.GELU:
                approx = module.approximate
            _replace(model, name, CompactActivation(act, approx, getattr(torch, config.compact_dtype)), state)
        elif config.fused_norms and kind.__name__ in RMSNORM_STYLES:
            _replace(model, name, FusedRMSNorm.from_module(module), state)
        elif config.reuse_saved_inputs and kind is nn.LayerNorm:
            state["hooks"].append(module.register_forward_hook(mark_layernorm_output))
    hf = _transformers_model(model)
    if config.attention == "memeff" and hf is not None:
        attention.register()
        configs = _attention_configs(model)
        state["attn"] = (hf, hf.config._attn_implementation, [(c, c._attn_implementation) for c in configs])
        hf.set_attn_implementation(attention.NAME)
        for c in configs:
            c._attn_implementation = attention.NAME
    setattr(model, _STATE, state)
    return model


def remove_wtacrs(model: nn.Module) -> nn.Module:
    """Undo apply_wtacrs: the original modules come back, with the (possibly trained) Parameters."""
    state = getattr(model, _STATE, None)
    if state is None:
        raise ValueError("this model has no WTA-CRS layers: apply_wtacrs(model, config) was not called on it")
    for handle in state["hooks"]:
        handle.remove()
    for name, original, moved in reversed(state["replaced"]):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        for pname, new_name in moved:  # the replacement's Parameters as they are now: trained, sharded or swapped
            original._parameters[pname] = getattr(getattr(parent, child), new_name)
        setattr(parent, child, original)
    if state["attn"] is not None:
        hf, previous, configs = state["attn"]
        hf.set_attn_implementation(previous)
        for c, implementation in configs:
            c._attn_implementation = implementation
    delattr(model, _STATE)
    return model


def wtacrs_layers(model: nn.Module) -> list[tuple[str, WTACRSLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, WTACRSLinear)]


def cache_bytes(model: nn.Module) -> int:
    """Bytes held by the gradient-norm histories (0 for norm_source='activation')."""
    return sum(layer.norm_history.nbytes() for _, layer in wtacrs_layers(model))
