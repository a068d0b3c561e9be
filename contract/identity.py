"""A job's model identity: what results group by, beyond the family name.

Two jobs on `{"family": "bert", "overrides": {"hidden_size": 256, "num_hidden_layers": 4}}` and on a
24-layer bert are different models; grouped as "bert", the second's full row became the first's
baseline and a ratio read 94x instead of 3.6x. So a model is keyed by what builds it:

- a preset keeps its name (`bert-base`), and so does a family without overrides (`bert`);
- a family with overrides is `family~<hash>`, the hash of its canonical overrides (keys sorted,
  values as JSON), so the same overrides in any order are one model and any other value another.

The key is stable (stored in the jobs and results tables, where it fits their 64-character model
column) and never shown alone: `label` is what pages print, e.g. `bert (hidden 256, 4 layers)`."""

from __future__ import annotations

import hashlib
import json

HASH_CHARS = 12  # 48 bits: a collision needs ~16 million distinct configurations of one family
MAX_LABEL = 160

# Config keys the label names in words, in this order; any other override follows as key=value.
# Several families spell one quantity differently (BERT hidden_size, T5 d_model, GPT-2 n_embd).
_WORDS: tuple[tuple[tuple[str, ...], str, bool], ...] = (
    (("hidden_size", "d_model", "n_embd"), "hidden", False),
    (("num_hidden_layers", "num_layers", "n_layer"), "layers", True),
    (("num_decoder_layers",), "decoder layers", True),
    (("num_encoder_layers",), "encoder layers", True),
    (("num_attention_heads", "num_heads", "n_head"), "heads", True),
    (("num_key_value_heads",), "kv heads", True),
    (("intermediate_size", "d_ff", "n_inner", "ffn_dim"), "ffn", False),
    (("vocab_size",), "vocab", False),
)


def canonical(overrides: dict) -> str:
    """The overrides as one string: the same mapping in any key order gives the same text."""
    return json.dumps(overrides, sort_keys=True, separators=(",", ":"), allow_nan=False)


def key(family: str, overrides: dict | None) -> str:
    if not overrides:
        return family
    digest = hashlib.sha256(canonical(overrides).encode()).hexdigest()[:HASH_CHARS]
    return f"{family}~{digest}"


def label(family: str, overrides: dict | None) -> str:
    """`bert (hidden 256, 4 layers)`: counts read "4 layers", sizes "hidden 256"."""
    if not overrides:
        return family
    left = dict(overrides)
    parts = []
    for names, word, count in _WORDS:
        for name in names:
            if name in left:
                value = left.pop(name)
                parts.append(f"{value} {word}" if count else f"{word} {value}")
    parts += [f"{k}={left[k]}" for k in sorted(left)]
    text = f"{family} ({', '.join(parts)})"
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def of_spec_model(model: str | dict) -> tuple[str, str]:
    """(key, label) of a spec's `model` as stored JSON: a preset name or {family, overrides}."""
    if isinstance(model, str):
        return model, model
    family, overrides = model.get("family", "?"), model.get("overrides") or {}
    return key(family, overrides), label(family, overrides)
