"""The family registry: records check themselves, the public tables derive from it, each record
names the classes its family really builds, and it imports where torch is absent."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.activations import ACT2CLS

import wtacrs
from tests.wtacrs.models import tiny
from wtacrs.families import FAMILIES, Family

ROOT = Path(__file__).parents[2]
GOOD = {
    "model_type": "x",
    "config_class": "XConfig",
    "head_class": "XForCausalLM",
    "task": "causal_lm",
    "targets": (r"proj$",),
    "tiny": {},
}


@pytest.mark.parametrize(
    "change,message",
    [
        ({"task": "regression"}, r"task 'regression' is not one of \['classification', 'seq2seq', 'causal_lm'\]"),
        ({"targets": ()}, "targets is empty"),
        ({"targets": ("(",)}, "target '\\(' is not a valid regex"),
        ({"norms": {"XRMSNorm": "x"}}, r"norm XRMSNorm has style 'x'; allowed: \['t5', 'llama', 'gemma'\]"),
        ({"activations": {"XAct": ("relu", "none")}}, r"activation XAct is \('relu', 'none'\); kinds: \['gelu'"),
        ({"pretrained": {"x-base": "x_weights"}}, r"pretrained names \['x-base'\], which are not among its presets"),
        ({"position_offset": -1}, "position_offset -1 is negative"),
    ],
)
def test_a_bad_record_says_what_is_allowed(change, message):
    with pytest.raises(ValueError, match=f"family 'x': {message}"):
        Family(**{**GOOD, **change})


def test_records_are_read_only():
    record = FAMILIES["gemma"]
    with pytest.raises(AttributeError):
        record.task = "seq2seq"
    with pytest.raises(TypeError):
        record.presets["gemma-2b"]["hidden_size"] = 1


def test_default_targets_are_the_registry_s():
    assert wtacrs.DEFAULT_TARGETS == {name: record.targets for name, record in FAMILIES.items()}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_record_names_what_the_family_builds(name):
    """With the recommended preset no norm or activation of the family keeps its own tensors:
    a class renamed by transformers, or a family added with a wrong name, fails here."""
    model = tiny(name)
    assert model.config.model_type == name
    wtacrs.apply_wtacrs(model, wtacrs.WTACRSConfig(ratio=0.3))
    # BERT's pooler tanh sees one row per sequence: not worth a saver, so not counted
    activations = tuple(c if isinstance(c, type) else c[0] for c in ACT2CLS.values() if c is not torch.nn.Tanh)
    left = {
        type(m).__name__
        for m in model.modules()
        if not type(m).__module__.startswith("wtacrs.")
        and (type(m).__name__.endswith(("RMSNorm", "T5LayerNorm")) or isinstance(m, (*activations, torch.nn.ReLU)))
    }
    assert not left, f"{name}: {sorted(left)} are not replaced; name them in its Family record"


def test_imports_without_torch_or_transformers():
    code = "import sys, wtacrs.families, contract.spec; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
