"""MEFT's per-family pieces: the bottleneck adapter and, for each family, the two sub-blocks a
reversible layer couples (attention and FFN, each returning what the pre-trained sub-block returns,
residual included) and where the model keeps its layers. `wtacrs/meft.py` builds the reversible
stack from them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn


class MEFTAdapter(nn.Module):
    """Houlsby-style bottleneck: up(dropout(act(down(x)))); `up` starts at zero (output 0)."""

    def __init__(
        self, hidden: int, r: int, act: str = "gelu", dropout: float = 0.0, std: float = 0.02, device=None, dtype=None
    ):
        super().__init__()
        self.down = nn.Linear(hidden, r, device=device, dtype=dtype)
        self.up = nn.Linear(r, hidden, device=device, dtype=dtype)
        self.act = act
        self.dropout = nn.Dropout(dropout)
        with torch.no_grad():
            self.down.weight.normal_(0.0, std)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x)
        if self.act == "relu":
            h = torch.relu(h)
        elif self.act in ("silu", "swish"):
            h = nn.functional.silu(h)
        else:
            h = nn.functional.gelu(h, approximate="tanh" if "new" in self.act or "tanh" in self.act else "none")
        return self.up(self.dropout(h))

    def extra_repr(self) -> str:
        return f"act={self.act}"


# ---- per-family sub-blocks: each returns what the pre-trained sub-block returns (residual included)


def _bert_attn(layer, h, kw, adapter):
    att = layer.attention
    context, _ = att.self(h, attention_mask=kw.get("attention_mask"), **kw["extra"])
    o = att.output.dropout(att.output.dense(context))
    if adapter is not None:
        o = o + adapter(o)
    return att.output.LayerNorm(o + h)


def _bert_mlp(layer, a, kw, adapter):
    o = layer.output.dropout(layer.output.dense(layer.intermediate(a)))
    if adapter is not None:
        o = o + adapter(a)
    return layer.output.LayerNorm(o + a)


def _llama_attn(layer, h, kw, adapter):
    o, _ = layer.self_attn(
        hidden_states=layer.input_layernorm(h), attention_mask=kw.get("attention_mask"), **kw["extra"]
    )
    if adapter is not None:
        o = o + adapter(o)
    return h + o


def _llama_mlp(layer, h, kw, adapter):
    n = layer.post_attention_layernorm(h)
    o = layer.mlp(n)
    if adapter is not None:
        o = o + adapter(n)
    return h + o


def _opt_attn(layer, h, kw, adapter):
    pre = layer.do_layer_norm_before
    o, _ = layer.self_attn(
        hidden_states=layer.self_attn_layer_norm(h) if pre else h,
        attention_mask=kw.get("attention_mask"),
        **kw["extra"],
    )
    o = nn.functional.dropout(o, p=layer.dropout, training=layer.training)
    if adapter is not None:
        o = o + adapter(o)
    out = h + o
    return out if pre else layer.self_attn_layer_norm(out)


def _opt_mlp(layer, h, kw, adapter):
    pre = layer.do_layer_norm_before
    n = layer.final_layer_norm(h) if pre else h
    o = layer.fc2(layer.activation_fn(layer.fc1(n)))
    o = nn.functional.dropout(o, p=layer.dropout, training=layer.training)
    if adapter is not None:
        o = o + adapter(n)
    out = h + o
    return out if pre else layer.final_layer_norm(out)


@dataclass(frozen=True)
class _Family:
    stack: tuple[str, ...]  # attribute path from the model to the layers' parent, tried in order
    layers: str  # the ModuleList's attribute there
    attn: object
    mlp: object
    positional: tuple[str, ...]  # names of the positional arguments the loop passes after hidden_states
    drop: tuple[str, ...]  # keyword arguments not passed on to attention
    heads: tuple[str, ...]  # trainable head modules (kept trainable when the base is frozen)


_LLAMA = _Family(
    ("model",), "layers", _llama_attn, _llama_mlp, ("attention_mask",), ("past_key_values", "use_cache"), ("score",)
)
FAMILIES = {
    "bert": _Family(
        ("bert.encoder", "encoder"),
        "layer",
        _bert_attn,
        _bert_mlp,
        ("attention_mask", "encoder_hidden_states"),
        ("encoder_hidden_states", "encoder_attention_mask", "past_key_values", "use_cache", "output_attentions"),
        ("classifier",),
    ),
    "opt": _Family(
        ("model.decoder", "decoder"), "layers", _opt_attn, _opt_mlp, (), ("past_key_values", "use_cache"), ("score",)
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gemma": _LLAMA,
}
FAMILIES["roberta"] = dataclasses.replace(FAMILIES["bert"], stack=("roberta.encoder", "encoder"))


def _resolve(model: nn.Module, path: str):
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _hidden_act(config) -> str:
    act = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None) or "gelu"
    return act if isinstance(act, str) else "gelu"


def _dropout(config) -> float:
    for name in ("hidden_dropout_prob", "dropout", "hidden_dropout"):
        value = getattr(config, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0
