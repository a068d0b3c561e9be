"""Every registered family goes through the profiler: a job runs on it in each mode, every preset
is a valid config of the size it claims, and unknown names are refused with the known ones listed."""

import pytest
import torch
import transformers

from contract.presets import PRESETS
from contract.spec import JobSpec
from profiler.runner import run_job
from profiler.trial.zoo import build_config, make_batch, resolve
from tests.grid import family_grid
from wtacrs.families import FAMILIES, family


def _job(model, device):
    spec = {
        "model": model,
        "methods": ["full", "wtacrs@0.3", "lora+wtacrs@0.3"],
        "seq_len": 16,
        "batch_sizes": [2],
        "device": device,
        "measurements": ["peak_memory"],
        "steps": 1,
        "warmup": 0,
    }
    return run_job(JobSpec.model_validate(spec), isolate=False).model_dump(mode="json")


# every family traces, OPT's LayerDrop draw included (profiler.trial.build.real_random_scalars)
@pytest.mark.parametrize("name,device", family_grid(FAMILIES, ("cpu", "estimate")))
def test_every_family_runs_a_job(name, device):
    # the family's tiny test config as overrides: the path a user takes for a model without a preset
    result = _job({"family": name, "overrides": dict(FAMILIES[name].tiny)}, device)
    assert result["status"] == "succeeded", result["errors"]
    full, sampled, lora = result["results"]
    assert sampled["activation_bytes"] < full["activation_bytes"]
    assert lora["peak_bytes"] < full["peak_bytes"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_a_valid_config(preset):
    name, config = build_config(preset, seq_len=128)
    with torch.device("meta"):  # shapes only: a 7B model costs nothing here
        model = getattr(transformers, FAMILIES[name].head_class)(config)
    assert sum(p.numel() for p in model.parameters()) > 0
    batch = make_batch(name, config, 2, 16, "cpu")
    assert batch["input_ids"].shape == (2, 16) and int(batch["input_ids"].max()) < config.vocab_size


def test_gemma_2b_has_the_published_size():
    _, config = build_config("gemma-2b", seq_len=8192)
    with torch.device("meta"):
        model = transformers.GemmaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())  # the output head shares the embedding
    assert round(params / 1e9, 2) == 2.51
    attention = model.model.layers[0].self_attn
    assert (attention.q_proj.out_features, attention.k_proj.out_features) == (8 * 256, 256)  # one kv head
    with pytest.raises(ValueError, match="exceeds this model's 8192 positions"):
        build_config("gemma-2b", seq_len=8193)


def _model(name, **overrides):
    spec = {"model": {"family": name, "overrides": overrides}, "methods": ["full"], "seq_len": 8, "batch_sizes": [1]}
    return JobSpec.model_validate(spec).model


def test_family_fix_ups_are_applied():
    _, t5 = build_config(_model("t5"), 64)
    assert t5.decoder_start_token_id == t5.pad_token_id == 0  # as the public T5 checkpoints
    _, bert = build_config(_model("bert", num_labels=5), 64)
    assert bert.num_labels == 2
    with pytest.raises(ValueError, match="exceeds this model's 512 positions"):
        build_config("roberta-base", seq_len=513)  # 514 positions, the first two reserved
    build_config("roberta-base", seq_len=512)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model family 'mamba'; known families: \['bert', 'gemma'"):
        family("mamba")
    with pytest.raises(ValueError, match=r"unknown model preset 'gemma-huge'; presets: \["):
        resolve("gemma-huge")
