"""Method names ("full", "lora+wtacrs@0.3", ...) parsed into a Method; no torch here (the API uses it)."""

from __future__ import annotations

import re
from dataclasses import dataclass

SAMPLERS = ("wtacrs", "crs", "topk")
ADAPTERS = ("lora", "velora")
FLAGS = ("checkpointing",)
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
]
_SAMPLER = re.compile(r"^(wtacrs|crs|topk)@([0-9]*\.?[0-9]+)$")


@dataclass(frozen=True)
class Method:
    name: str
    adapter: str | None = None  # "lora" | "velora"
    sampler: str | None = None  # "wtacrs" | "crs" | "topk"
    ratio: float | None = None
    checkpointing: bool = False


def parse_method(text: str) -> Method:
    """Parse a method name; raise ValueError saying what is wrong and what is allowed."""
    allowed = f"allowed: 'full', or '+'-joined parts from {list(ADAPTERS + FLAGS)} and 'wtacrs@R'/'crs@R'/'topk@R' with 0 < R <= 1, e.g. {EXAMPLES}"
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"method {text!r} is empty; {allowed}")
    name = text.strip().lower()
    if name == "full":
        return Method("full")
    adapter = sampler = ratio = None
    checkpointing = False
    for part in name.split("+"):
        match = _SAMPLER.match(part)
        if part in ADAPTERS:
            if adapter:
                raise ValueError(f"method {text!r} names two adapters ({adapter}, {part}); {allowed}")
            adapter = part
        elif part in FLAGS:
            checkpointing = True
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
    return Method(name, adapter, sampler, ratio, checkpointing)
