import contextlib
import json

import pytest
import torch

import wtacrs
from contract.methods import parse_method
from contract.spec import JobSpec
from profiler.instruments.cuda_model import SM90
from profiler.instruments.saved_by import OTHER, summarise
from profiler.producers.attribution import attribute
from profiler.producers.trials import trial_row
from profiler.tables import format_table
from profiler.trial.build import build_trial

MODELS = ("bert-tiny", "t5-tiny", "llama-tiny")
MODES = ("cpu", "estimate")
METHODS = ("full", "wtacrs@0.3", "lora+wtacrs@0.3")
BATCH, SEQ = 4, 32
# what saves a WTA-CRS layer's kept rows: its autograd Function, or its torch.library custom op
SAMPLED_OPS = {"WTACRSLinearFn", "wtacrs::linear"}
_CACHE: dict = {}


def spec(model, mode, method):
    return JobSpec.model_validate(
        {
            "model": model,
            "methods": [method],
            "seq_len": SEQ,
            "batch_sizes": [BATCH],
            "device": mode,
            "measurements": ["peak_memory"],
            "steps": 1,
            "warmup": 0,
        }
    )


def run(model, mode, method):
    """(attribution, the model's module paths and wtacrs layer paths), built as a job trial is."""
    key = (model, mode, method)
    if key not in _CACHE:
        s = spec(model, mode, method)
        fake = None
        if mode == "estimate":
            from torch._subclasses.fake_tensor import FakeTensorMode

            fake = FakeTensorMode(allow_non_fake_inputs=True)
        with fake if fake is not None else contextlib.nullcontext():
            trial = build_trial(s, parse_method(method), BATCH, torch.device("cpu"), fake, SM90 if fake else None)
            out = attribute(trial, mode, method)
        names = set(dict(trial.model.named_modules()))
        sampled = {n for n, _ in wtacrs.wtacrs_layers(trial.model)}
        _CACHE[key] = (out, names, sampled)
    return _CACHE[key]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", MODELS)
def test_modules_add_up_to_the_rows_activation_bytes(model, mode, method):
    out, names, _ = run(model, mode, method)
    json.dumps(out)  # serialisable as is
    assert (out["method"], out["batch_size"], out["mode"]) == (method, BATCH, mode)
    assert sum(m["bytes"] for m in out["modules"]) == out["total_bytes"] == sum(out["ops"].values())
    assert sum(g["bytes"] for g in out["groups"]) == out["total_bytes"]
    assert "(unknown)" not in out["ops"]  # every saved storage has a named saver
    for m in out["modules"]:
        assert m["module"] in names, m
        assert m["type"] and sum(m["ops"].values()) == m["bytes"] > 0
    assert [m["bytes"] for m in out["modules"]] == sorted((m["bytes"] for m in out["modules"]), reverse=True)
    # the same storages as the trial row's activation_bytes, each counted once by its first saver
    row = trial_row(spec(model, mode, method), parse_method(method), BATCH, throughput=False)
    assert row.error is None, row.error
    assert out["raw_bytes"] == row.activation_bytes > 0
    if mode == "estimate":  # rounded to the sm90 allocator's 512-byte blocks, as the tracker counts
        assert out["block_bytes"] == 512 and out["estimate_device"] == "cuda-sm90"
        assert 0 <= out["total_bytes"] - out["raw_bytes"] < 512 * len(out["modules"]) * 8
    else:
        assert out["block_bytes"] == 1 and out["total_bytes"] == out["raw_bytes"]
    assert 0 <= out["peak_activation_bytes"] <= out["total_bytes"]


@pytest.mark.parametrize("mode", MODES)
def test_bert_attention_module_holds_q_k_v(mode):
    out, _, _ = run("bert-tiny", mode, "full")
    hidden = 128  # bert-tiny
    by_path = {m["module"]: m for m in out["modules"]}
    for layer in (0, 1):
        attn = by_path[f"bert.encoder.layer.{layer}.attention.self"]
        # q, k, v and the output of scaled-dot-product attention, fp32, saved by that op
        assert attn["bytes"] >= 4 * BATCH * SEQ * hidden * 4
        assert "scaled_dot_product" in max(attn["ops"], key=attn["ops"].get)
    if mode == "estimate":  # the fused kernel CUDA runs keeps q, k, v, out and a log-sum-exp only
        ops = by_path["bert.encoder.layer.0.attention.self"]["ops"]
        assert set(ops) == {"_scaled_dot_product_efficient_attention"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", MODELS)
def test_sampled_linears_keep_less_than_full_ones(model, mode):
    full, _, _ = run(model, mode, "full")
    wta, _, sampled = run(model, mode, "wtacrs@0.3")
    assert sampled
    f = {m["module"]: m["bytes"] for m in full["modules"]}
    w = {m["module"]: m for m in wta["modules"]}
    held = [name for name in sampled if name in w]
    assert held and all(SAMPLED_OPS & set(w[name]["ops"]) for name in held)
    # the linears that own their input under full fine-tuning keep about 0.3 of it sampled
    owners = [name for name in held if f.get(name, 0) >= BATCH * SEQ * 4 * 16]
    assert owners
    for name in owners:
        assert w[name]["bytes"] < 0.5 * f[name], (name, w[name], f[name])
    assert wta["total_bytes"] < full["total_bytes"]


def test_lora_keeps_the_sampled_input_for_the_adapter():
    out, _, sampled = run("bert-tiny", "estimate", "lora+wtacrs@0.3")
    assert sampled
    by_path = {m["module"]: m for m in out["modules"]}
    kept = [p for p in by_path if SAMPLED_OPS & set(by_path[p]["ops"])]
    assert kept and all(p in sampled for p in kept)


def test_deterministic():
    s = spec("t5-tiny", "estimate", "lora+wtacrs@0.3")
    from profiler.producers.attribution import attribute_spec

    first = attribute_spec(s, "lora+wtacrs@0.3", BATCH)
    assert first == attribute_spec(s, "lora+wtacrs@0.3", BATCH)
    assert first == run("t5-tiny", "estimate", "lora+wtacrs@0.3")[0]


def test_bounded_with_an_other_entry():
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(5)])
    records = [(str(i), "linear", 1000 * (i + 1)) for i in range(5)] + [("", "mul", 10), ("0", "mul", 700)]
    out = summarise(records, model, block=512, top=2)
    assert [m["module"] for m in out["modules"]] == ["4", "3", OTHER]
    assert out["modules"][0]["bytes"] == 5120 and out["raw_bytes"] == 15710
    assert sum(m["bytes"] for m in out["modules"]) == out["total_bytes"] == 512 * (2 + 4 + 6 + 8 + 10 + 1 + 2)
    assert out["modules"][-1]["ops"] == {"linear": 512 * (2 + 4 + 6), "mul": 512 * 3}
    assert out["module_count"] == 6


def test_format_table():
    out, _, _ = run("bert-tiny", "estimate", "full")
    text = format_table(out, top=5)
    lines = text.splitlines()
    assert lines[0].startswith("saved for backward: full batch 4 (estimate)")
    assert lines[1].split()[:3] == ["module", "KiB", "top"]  # a tiny model's bytes in KiB, not 0.0 MiB
    assert len(lines) == 2 + 5 + 2  # header, 5 modules, the rest, the total
    top = out["modules"][0]
    assert lines[2].startswith(top["module"]) and f"{top['bytes'] / 2**10:.1f}" in lines[2]
    assert lines[-1].split()[0] == "total" and float(lines[-1].split()[1]) == round(out["total_bytes"] / 2**10, 1)
    big = {**out, "total_bytes": 20 * 2**20}
    assert format_table(big, top=5).splitlines()[1].split()[1] == "MiB"
    assert "<root>" in format_table(out, top=100)  # the loss, saved by the model itself


def test_checkpointing_keeps_region_inputs():
    out, names, _ = run("t5-tiny", "estimate", "checkpointing")
    assert "checkpoint_inputs" in out["ops"] and "(unknown)" not in out["ops"]
    assert all(m["module"] in names for m in out["modules"])
    row = trial_row(
        spec("t5-tiny", "estimate", "checkpointing"), parse_method("checkpointing"), BATCH, throughput=False
    )
    assert out["raw_bytes"] == row.activation_bytes
    assert out["total_bytes"] < run("t5-tiny", "estimate", "full")[0]["total_bytes"]
