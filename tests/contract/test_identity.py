"""A model's identity: presets by name, a family's overrides by their canonical form."""

import pytest

from contract import identity
from contract.spec import JobSpec

SMALL = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024}


def spec(model):
    return JobSpec.model_validate(
        {"model": model, "methods": ["full"], "batch_sizes": [2], "seq_len": 16, "device": "cpu"}
    )


def test_presets_and_bare_families_keep_their_names():
    assert (spec("bert-base").model_key, spec("bert-base").model_label) == ("bert-base", "bert-base")
    bare = spec({"family": "bert"})
    assert (bare.model_key, bare.model_label) == ("bert", "bert")


def test_overrides_key_is_order_free_and_value_sensitive():
    a = spec({"family": "bert", "overrides": SMALL})
    b = spec({"family": "bert", "overrides": dict(reversed(list(SMALL.items())))})
    deeper = spec({"family": "bert", "overrides": {**SMALL, "num_hidden_layers": 24}})
    assert a.model_key == b.model_key
    assert a.model_key.startswith("bert~") and len(a.model_key) <= 64
    assert deeper.model_key != a.model_key
    # a bool and an int are different config values, as transformers reads them
    assert identity.key("bert", {"use_cache": True}) != identity.key("bert", {"use_cache": 1})
    # another family with the same overrides is another model
    assert identity.key("roberta", SMALL) != a.model_key


def test_label_names_sizes_and_counts_in_words():
    assert spec({"family": "bert", "overrides": SMALL}).model_label == "bert (hidden 256, 4 layers, 4 heads, ffn 1024)"
    assert identity.label("t5", {"d_model": 512, "num_layers": 6, "dropout_rate": 0.0}) == (
        "t5 (hidden 512, 6 layers, dropout_rate=0.0)"
    )
    long = identity.label("llama", {f"k{i:02d}": i for i in range(60)})
    assert len(long) == identity.MAX_LABEL and long.endswith("…")


@pytest.mark.parametrize("stored", ["gpt2", {"family": "gpt2"}, {"family": "gpt2", "overrides": {"n_layer": 3}}])
def test_stored_spec_json_gives_the_same_identity_as_the_validated_spec(stored):
    s = spec(stored)
    assert identity.of_spec_model(s.model_dump(mode="json")["model"]) == (s.model_key, s.model_label)
