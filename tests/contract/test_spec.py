import json
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from contract.methods import parse_method
from contract.spec import JobSpec

MINIMAL = json.loads((Path(__file__).parents[1] / "data" / "minimal_spec.json").read_text())


def test_minimal_spec_is_accepted_as_written():
    spec = JobSpec.model_validate(MINIMAL)
    assert spec.model == "bert-tiny" and spec.methods == ["full", "wtacrs@0.3"] and spec.batch_sizes == [2, 4]


def test_compile_is_a_flag_of_the_measured_modes():
    assert JobSpec.model_validate(MINIMAL).compile is False
    for device in ("cpu", "cuda"):
        spec = JobSpec.model_validate({**MINIMAL, "compile": True, "device": device})
        assert spec.compile and spec.device == device
    max_batch = {"measurements": ["max_batch_size"], "target_memory_gb": 1}
    assert JobSpec.model_validate({**MINIMAL, **max_batch, "compile": True}).compile
    # refused only with compile: estimate and ddp without it are specs like any other
    JobSpec.model_validate({**MINIMAL, "device": "estimate", "measurements": ["peak_memory"]})
    JobSpec.model_validate({**MINIMAL, "parallel": {"strategy": "ddp", "world_size": 2}})


def test_family_with_overrides():
    spec = JobSpec.model_validate({**MINIMAL, "model": {"family": "llama", "overrides": {"hidden_size": 64}}})
    assert spec.model_name == "llama"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"model": "bert-huge"}, "unknown model preset 'bert-huge'; presets: \\["),
        ({"model": {"family": "mamba"}}, "unknown model family 'mamba'; known families"),
        ({"methods": ["wtacrs@1.5"]}, "ratio 1.5 is outside \\(0, 1\\]"),
        ({"methods": ["sparse"]}, "unknown part 'sparse'"),
        ({"methods": ["full", "full"]}, "methods repeat \\['full'\\]"),
        ({"methods": []}, "at least 1 item"),
        ({"measurements": ["speed"]}, "unknown measurements \\['speed'\\]; allowed"),
        ({"batch_sizes": [0, 2]}, "batch_sizes \\[0\\] are outside"),
        ({"batch_sizes": []}, "need batch_sizes"),
        ({"device": "tpu"}, "'cuda', 'cpu' or 'estimate'"),
        ({"dtype": "fp8"}, "'fp32', 'bf16', 'fp16' or 'bf16-weights'"),
        ({"device": "estimate"}, "cannot measure throughput"),
        ({"device": "estimate", "measurements": ["max_batch_size"]}, "needs target_memory_gb"),
        ({"device": "estimate", "measurements": ["fidelity"]}, "cannot measure fidelity"),
        ({"measurements": ["max_batch_size"]}, "host memory has no hard limit"),
        ({"dtype": "fp16"}, "'fp16' \\(autocast\\) is not supported on device 'cpu'"),
        ({"seq_len": 0}, "greater than or equal to 1"),
        ({"device": "estimate", "measurements": ["peak_memory"], "methods": ["velora"]}, "FakeTensorMode cannot trace"),
        ({"batch_size": [2]}, "unknown field 'batch_size'; allowed fields: model, methods, seq_len, batch_sizes"),
        (
            {"measurements": ["convergence"]},
            "model 'bert-tiny' has none. Models with weights: \\['all-minilm-l6-v2'\\]",
        ),
        (
            {"model": "all-minilm-l6-v2", "measurements": ["convergence"], "device": "estimate"},
            "cannot train",
        ),
        (
            {"model": "all-minilm-l6-v2", "measurements": ["convergence"], "dtype": "bf16-weights"},
            "measurement 'convergence' does not support dtype 'bf16-weights'; use dtype 'fp32', 'bf16' or 'fp16'",
        ),
        ({"convergence": {"norm_source": "oracle"}}, "'running', 'example' or 'activation'"),
        (
            {"compile": True, "device": "estimate", "measurements": ["peak_memory"]},
            "compile: true cannot be estimated: device 'estimate' traces the eager step op by op",
        ),
        (
            {"compile": True, "parallel": {"strategy": "fsdp", "world_size": 2}},
            "compile: true with parallel strategy 'fsdp' is not supported",
        ),
        ({"compile": True, "measurements": ["fidelity"]}, "measurement 'fidelity' runs no compiled step"),
        (
            {"compile": True, "measurements": ["memory_attribution"]},
            "measurement 'memory_attribution' runs no compiled step: it attributes saved tensors to the modules",
        ),
        ({"convergence": {"epochs": 0}}, "greater than or equal to 1"),
        (
            {"optimizer": "lion"},
            "'adamw', 'adamw-foreach', 'adamw-fused', 'adamw-single', 'adam', 'sgd' or 'adafactor'",
        ),
        (
            {"optimizer": "adafactor", "device": "estimate", "measurements": ["peak_memory"]},
            "optimizer 'adafactor' cannot be estimated: torch's Adafactor reads parameter and update norms on the host",
        ),
    ],
)
def test_bad_specs_say_what_is_wrong(change, message):
    with pytest.raises(ValidationError, match=message):
        JobSpec.model_validate({**MINIMAL, **change})


def test_optimizer_names_its_implementation_and_defaults_to_torchs():
    """Issue 29: adamw (the default, and what a spec without the field means) is torch's default for
    the device; the others pin an implementation. Resolved by the profiler (profiler.trial.build.optimizer_impl)."""
    assert JobSpec.model_validate(MINIMAL).optimizer == "adamw"
    assert "optimizer" not in MINIMAL
    for name in ("adamw", "adamw-foreach", "adamw-fused", "adamw-single", "adam", "sgd"):
        for device in ("cpu", "cuda", "estimate"):
            spec = {**MINIMAL, "optimizer": name, "device": device, "measurements": ["peak_memory"]}
            assert JobSpec.model_validate(spec).optimizer == name
    for device in ("cpu", "cuda"):
        assert JobSpec.model_validate({**MINIMAL, "optimizer": "adafactor", "device": device}).optimizer == "adafactor"


def test_bf16_weights_is_a_dtype_everywhere_a_batch_is_profiled():
    for device in ("cpu", "cuda", "estimate"):  # validation only: no device is needed
        measurements = ["peak_memory"] if device == "estimate" else ["peak_memory", "throughput", "fidelity"]
        spec = {**MINIMAL, "dtype": "bf16-weights", "device": device, "measurements": measurements}
        assert JobSpec.model_validate(spec).dtype == "bf16-weights"


@pytest.mark.parametrize(
    "text,adapter,sampler,ratio,ckpt",
    [
        ("full", None, None, None, False),
        ("lora", "lora", None, None, False),
        ("velora", "velora", None, None, False),
        ("checkpointing", None, None, None, True),
        ("lora+wtacrs@0.1", "lora", "wtacrs", 0.1, False),
        ("LoRA + checkpointing".replace(" ", ""), "lora", None, None, True),
        ("topk@.5", None, "topk", 0.5, False),
    ],
)
def test_method_grammar(text, adapter, sampler, ratio, ckpt):
    m = parse_method(text)
    assert (m.adapter, m.sampler, m.ratio, m.checkpointing) == (adapter, sampler, ratio, ckpt)


@pytest.mark.parametrize("text", ["lora+velora", "full+lora", "wtacrs@0.3+crs@0.3", "wtacrs", "wtacrs@0", ""])
def test_method_grammar_errors(text):
    with pytest.raises(ValueError, match="allowed"):
        parse_method(text)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"methods": ["full"] * 600_000}, "List should have at most 32 items after validation, not 600000"),
        ({"batch_sizes": list(range(1, 600_001))}, "List should have at most 64 items after validation, not 600000"),
        (
            {"model": {"family": "bert", "overrides": {f"k{i}": [] for i in range(50_000)}}},
            "50000 overrides; at most 64",
        ),
        ({f"k{i}": 0 for i in range(40_000)}, "unknown field 'k0', 'k1', 'k2', 'k3', 'k4' and 39995 more"),
        ({"convergence": {"nope": 1}}, "unknown field 'nope'; allowed fields: data, train_examples"),
    ],
)
def test_oversized_specs_are_refused_at_once_with_the_limit(change, message):
    """Issue #17: a 600 000-method spec took 320 s to refuse (a quadratic duplicate check)."""
    started = time.perf_counter()
    with pytest.raises(ValidationError, match=message) as err:
        JobSpec.model_validate({**MINIMAL, **change})
    assert time.perf_counter() - started < 1.0
    assert err.value.error_count() <= 2  # one error, not one per item or key
