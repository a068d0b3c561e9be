"""Method names ("full", "lora+wtacrs@0.3", ...) parsed into a Method; no torch here (the API uses it)."""

from __future__ import annotations

import re
from dataclasses import dataclass

SAMPLERS = ("wtacrs", "crs", "topk")
ADAPTERS = ("lora", "velora")
FLAGS = ("checkpointing", "selective-checkpointing", "offload")
MEFTS = ("meft1", "meft2", "meft3")  # Liao et al. 2023: reversible adapters (wtacrs/meft.py)
# the families wtacrs/meft_blocks.py has sub-blocks for (tests/wtacrs/test_meft.py holds the two equal);
# why not the others: T5's first layer computes the position bias the rest reuse and its decoder reads
# the encoder output, which breaks the one-stream coupling; GPT-2's block fits but has no record yet
MEFT_FAMILIES = ("bert", "gemma", "llama", "mistral", "opt", "qwen2", "roberta")
# option -> (kind, low, high): meft1@r=16,lambda=0.1,beta=1
MEFT_OPTIONS = {"r": (int, 1, 4096), "lambda": (float, 0.0, 10.0), "beta": (float, 0.0, 10.0)}
# exactness, as the README's method table states it
EXACTNESS = {
    "full": "exact",
    "lora": "exact (adapter)",
    "velora": "approximate (compressed adapter inputs)",
    "checkpointing": "exact (recomputes)",
    "selective-checkpointing": "exact (recomputes pointwise ops)",
    "offload": "exact (host copies)",
    "wtacrs": "unbiased estimate",
    "crs": "unbiased estimate",
    "topk": "biased estimate",
    "meft": "exact in exact arithmetic; floating-point reconstruction error, amplified by 1/lambda, 1/beta per layer",
}
EXAMPLES = [
    "full",
    "lora",
    "velora",
    "checkpointing",
    "wtacrs@0.3",
    "lora+wtacrs@0.1",
    "crs@0.3",
    "topk@0.3",
    "lora+checkpointing",
    "wtacrs@0.3+checkpointing",
    "lora+wtacrs@0.1+checkpointing",
    "selective-checkpointing",
    "lora+selective-checkpointing",
    "offload",
    "lora+offload",
    "meft1",
    "meft3@r=16,lambda=0.1,beta=0.1",
]
_SAMPLER = re.compile(r"^(wtacrs|crs|topk)@([0-9]*\.?[0-9]+)$")
_MEFT = re.compile(r"^(meft[123])(?:@(.*))?$")


@dataclass(frozen=True)
class Method:
    name: str
    adapter: str | None = None  # "lora" | "velora"
    sampler: str | None = None  # "wtacrs" | "crs" | "topk"
    ratio: float | None = None
    checkpointing: bool = False
    meft: str | None = None  # "meft1" | "meft2" | "meft3"
    meft_r: int | None = None  # adapter bottleneck (None: the library's default, 8)
    meft_lambda: float | None = None  # scaling factors (None: the variant's defaults)
    meft_beta: float | None = None
    offload: bool = False  # saved tensors to (pinned) host memory
    selective_checkpointing: bool = False  # recompute pointwise ops, keep matmul outputs

    @property
    def exactness(self) -> str:
        """How the method's gradients relate to exact backprop (the README's method table)."""
        if self.meft:
            return EXACTNESS["meft"]
        if self.sampler:
            return EXACTNESS[self.sampler]
        return EXACTNESS[self.adapter] if self.adapter == "velora" else "exact"


def _parse_meft(text: str, variant: str, options: str | None, allowed: str) -> tuple[str, dict]:
    """meft1[@r=16,lambda=0.1,beta=1] -> canonical name, {option: value}."""
    values: dict = {}
    if options is not None:
        if not options:
            raise ValueError(f"method {text!r}: '@' needs options, e.g. 'meft1@r=16,lambda=0.1,beta=1'; {allowed}")
        for item in options.split(","):
            key, eq, raw = item.partition("=")
            key = key.strip()
            if key not in MEFT_OPTIONS or not eq:
                raise ValueError(
                    f"method {text!r}: option {item!r} is not one of {[k + '=...' for k in MEFT_OPTIONS]}; {allowed}"
                )
            if key in values:
                raise ValueError(f"method {text!r}: option {key!r} is given twice")
            kind, low, high = MEFT_OPTIONS[key]
            try:
                value = kind(raw.strip())
            except ValueError:
                raise ValueError(
                    f"method {text!r}: {key}={raw!r} is not a{'n integer' if kind is int else ' number'}"
                ) from None
            if kind is int and not low <= value <= high:
                raise ValueError(f"method {text!r}: {key}={value} is outside [{low}, {high}]")
            if kind is float and not low < value <= high:
                raise ValueError(
                    f"method {text!r}: {key}={value} is outside ({low}, {high}] (the coupling divides by it)"
                )
            values[key] = value
    name = variant
    if values:
        name += "@" + ",".join(
            f"{k}={values[k]:g}" if isinstance(values[k], float) else f"{k}={values[k]}"
            for k in MEFT_OPTIONS
            if k in values
        )
    return name, values


def parse_method(text: str) -> Method:
    """Parse a method name; raise ValueError saying what is wrong and what is allowed."""
    allowed = (
        f"allowed: 'full', 'meft1'/'meft2'/'meft3' (options @r=N,lambda=X,beta=Y), or '+'-joined parts from "
        f"{list(ADAPTERS + FLAGS)} and 'wtacrs@R'/'crs@R'/'topk@R' with 0 < R <= 1, e.g. {EXAMPLES}"
    )
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"method {text!r} is empty; {allowed}")
    name = text.strip().lower()
    if name == "full":
        return Method("full")
    meft = _MEFT.match(name.replace(" ", ""))
    if meft:
        canonical, values = _parse_meft(text, meft.group(1), meft.group(2), allowed)
        return Method(
            canonical,
            meft=meft.group(1),
            meft_r=values.get("r"),
            meft_lambda=values.get("lambda"),
            meft_beta=values.get("beta"),
        )
    adapter = sampler = ratio = None
    checkpointing = selective = offload = False
    for part in name.split("+"):
        match = _SAMPLER.match(part)
        if _MEFT.match(part):
            raise ValueError(
                f"method {text!r}: MEFT stands alone (it is its own adapter method, and it keeps no per-layer "
                f"activations for LoRA, WTA-CRS, checkpointing or offloading to reduce); {allowed}"
            )
        if part in ADAPTERS:
            if adapter:
                raise ValueError(f"method {text!r} names two adapters ({adapter}, {part}); {allowed}")
            adapter = part
        elif part == "checkpointing":
            checkpointing = True
        elif part == "selective-checkpointing":
            selective = True
        elif part == "offload":
            offload = True
        elif match:
            if sampler:
                raise ValueError(f"method {text!r} names two samplers; {allowed}")
            sampler, ratio = match.group(1), float(match.group(2))
            if not 0 < ratio <= 1:
                raise ValueError(f"method {text!r}: ratio {ratio} is outside (0, 1]; {allowed}")
        elif part == "full":
            raise ValueError(f"method {text!r}: 'full' cannot be combined; {allowed}")
        else:
            raise ValueError(f"method {text!r}: unknown part {part!r}; {allowed}")
    if selective and checkpointing:
        raise ValueError(
            f"method {text!r}: 'checkpointing' and 'selective-checkpointing' exclude each other; {allowed}"
        )
    if offload and (checkpointing or selective):
        raise ValueError(f"method {text!r}: 'offload' is not combined with checkpointing; {allowed}")
    return Method(name, adapter, sampler, ratio, checkpointing, offload=offload, selective_checkpointing=selective)
