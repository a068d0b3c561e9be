"""Hypothesis strategies for job specs the API accepts, kept tiny so each one runs in seconds.

They cover the method grammar (`contract/methods.py`: full, lora, velora, checkpointing,
wtacrs@R, crs@R, topk@R and '+'-joined combinations, in any order and case), every measurement of
the registry that is valid for the device (`contract/measurements.py`; convergence is left out:
it fine-tunes real weights on SST-2 for minutes), edge batch sizes and lengths, a family with
overrides at the spec's limits (64 overrides, 64-character names), every dtype and optimizer."""

from __future__ import annotations

from hypothesis import strategies as st

from contract.measurements import MEASUREMENTS
from contract.methods import parse_method
from contract.spec import MAX_NAME, MAX_OVERRIDES, JobSpec
from wtacrs.families import FAMILIES

TINY_PRESETS = ("bert-tiny", "t5-tiny", "gpt2-tiny", "llama-tiny", "gemma-tiny")
# measurements this file runs: every registered one but convergence (real weights, real data, minutes)
RUNNABLE = [name for name in MEASUREMENTS if name != "convergence"]
ESTIMATE_MEASUREMENTS = [name for name in RUNNABLE if MEASUREMENTS[name].estimate]
DTYPES = {"estimate": ["fp32", "bf16", "fp16", "bf16-weights"], "cpu": ["fp32", "bf16", "bf16-weights"]}


@st.composite
def ratios(draw) -> str:
    """Edge ratios (1, tiny) and ordinary ones, written as the grammar takes them (no exponent)."""
    return draw(st.sampled_from(["1", "1.0", "0.001", ".5", "0.3", "0.1"]) | st.integers(1, 999).map(_thousandths))


def _thousandths(n: int) -> str:
    return f"0.{n:03d}".rstrip("0")


@st.composite
def method_names(draw, device: str) -> str:
    adapters = [None, "lora"] + (["velora"] if device != "estimate" else [])  # VeLoRA cannot be traced
    adapter = draw(st.sampled_from(adapters))
    sampler = draw(st.sampled_from([None, "wtacrs", "crs", "topk"]))
    checkpointing = draw(st.booleans())
    parts = [p for p in (adapter, "checkpointing" if checkpointing else None) if p]
    if sampler:
        parts.append(f"{sampler}@{draw(ratios())}")
    if not parts:
        return "full"
    parts = draw(st.permutations(parts))
    name = "+".join(parts)
    return draw(st.sampled_from([name, name.upper(), f" {name} "]))  # the grammar lower-cases and strips


def _pad_overrides(tiny: dict, count: int) -> dict:
    """`count` overrides: the family's tiny config plus harmless extra config attributes whose names
    are MAX_NAME characters long (transformers keeps unknown config kwargs as attributes)."""
    out = dict(tiny)
    i = 0
    while len(out) < count:
        key = f"x_{i}_".ljust(MAX_NAME, "p")
        out[key] = i
        i += 1
    return out


@st.composite
def models(draw):
    if draw(st.booleans()):
        return draw(st.sampled_from(TINY_PRESETS))
    family = draw(st.sampled_from(sorted(FAMILIES)))
    tiny = dict(FAMILIES[family].tiny)
    count = draw(st.sampled_from([len(tiny), MAX_OVERRIDES]))
    return {"family": family, "overrides": _pad_overrides(tiny, count)}


@st.composite
def specs(draw, device: str = "estimate") -> dict:
    """A spec dict that `JobSpec` accepts and a worker can run in a few seconds."""
    model = draw(models())
    allowed = ESTIMATE_MEASUREMENTS if device == "estimate" else RUNNABLE
    measurements = draw(st.lists(st.sampled_from(allowed), min_size=1, max_size=2, unique=True))
    names = draw(st.lists(method_names(device), min_size=1, max_size=2, unique_by=lambda m: parse_method(m).name))
    # up to 64, the fewest positions a tiny model has (lengths past a model's are tested apart)
    seq_len = draw(st.sampled_from([1, 2, 7, 16, 64]))
    # estimate mode traces without memory, so a batch of a million costs what a batch of one does
    edge = [1, 2, 3, 8] + ([1_000_000] if device == "estimate" else [])
    batch_sizes = draw(st.lists(st.sampled_from(edge), min_size=1, max_size=2, unique=True))
    spec = {
        "model": model,
        "methods": names,
        "seq_len": seq_len,
        "batch_sizes": batch_sizes,
        "dtype": draw(st.sampled_from(DTYPES[device])),
        "optimizer": draw(st.sampled_from(["adamw", "adam", "sgd"])),
        "measurements": measurements,
        "device": device,
        "steps": draw(st.integers(1, 2)),
        "warmup": draw(st.integers(0, 1)),
        "seed": draw(st.sampled_from([0, 2**32 - 1])),
        "lora_r": draw(st.sampled_from([1, 8])),
    }
    if device == "estimate":
        spec["estimate_device"] = draw(st.sampled_from(["cuda-sm90", "cpu"]))
    if "max_batch_size" in measurements or draw(st.booleans()):
        # a small target and a low ceiling: a few probes, some of them over the limit
        spec["target_memory_gb"] = draw(st.sampled_from([0.001, 0.01, 0.05]))
        spec["max_batch"] = {"upper": draw(st.sampled_from([1, 4, 16])), "headroom": draw(st.sampled_from([0.0, 0.5]))}
    if "fidelity" in measurements:  # one draw per layer and method: keep it to the smallest batch
        spec["batch_sizes"] = [min(spec["batch_sizes"])]
    JobSpec.model_validate(spec)  # a strategy of valid specs: a bug here is the test's, not the API's
    return spec
