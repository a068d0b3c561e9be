"""WTACRSConfig: the one frozen description of how layers are sampled and which savers run."""

from __future__ import annotations

import math
from dataclasses import dataclass

METHODS = ("wta", "crs", "topk")
NORM_SOURCES = ("activation", "running", "example")
WINNER_RULES = ("adaptive", "none")
ATTENTION_MODES = ("memeff", "unchanged")
COMPACT_DTYPES = ("float16", "bfloat16")


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"WTACRSConfig.{name}={value!r} is not allowed; choose one of {list(allowed)}")


@dataclass(frozen=True)
class WTACRSConfig:
    """How WTA-CRS samples the activations kept for the weight gradient.

    The defaults are the recommended preset: winner-take-all column-row sampling with the
    paper's adaptive winner count, plus the companion savers that stop other operators from
    keeping the full activations alive (without them the layer alone saves ~1.2x, not ~3x).

    ratio: fraction of the N token rows kept for the weight gradient, 0 < ratio <= 1.
    min_k: never keep fewer rows than this (clipped to N).
    method: "wta" (paper), "crs" (plain sampling, no winners), "topk" (deterministic, biased).
    winners: "adaptive" sizes the deterministic set by minimising (1 - P_C) / (k - |C|);
        "none" forces |C| = 0 (same as method="crs").
    norm_source: where the output-gradient factor of the probability comes from:
        "activation" - none, p_i ∝ ||x_i|| (stateless);
        "running" - a per-position running mean of ||dY_i|| per layer (L floats per layer), the
            default: where the loss reads few positions (a [CLS] head) the rows that carry the
            gradient become winners after one step, while "activation" keeps sampling rows whose
            gradient is zero (benchmarks/RESULTS.md, fidelity);
        "example" - the paper's cache of each example's per-token ||dY_i|| from the last time
            it was seen, keyed by ids passed with `wtacrs.example_ids(ids)`; needs num_examples
            and costs num_examples x seq_len x 2 bytes per layer (see `cache_bytes`).
    target_modules: regexes matched (re.search) against module names; None uses the default
        table for the model type.
    share_inputs: layers reading the same tensor (q/k/v, gate/up) share one sample and one copy.
    reuse_saved_inputs: when the input is the output of a norm/activation whose own backward
        keeps enough to recompute rows, keep only indices and recompute the rows in backward.
    bit_masks: dropout and ReLU keep their masks as packed bits instead of bytes/floats.
    attention: "memeff" swaps in an exact attention that keeps q, k, v and the softmax
        statistics and recomputes the probabilities in backward; "unchanged" leaves it alone.
    compact_activations: GELU/SiLU keep their input in `compact_dtype` for backward when the
        model runs in fp32 (a 2^-11 relative rounding of the activation derivative, far below
        the sampling noise); 16-bit models are unaffected.
    fused_norms: RMSNorm (T5/LLaMA) saves only its input and 1/rms instead of 3-4 tensors.
    """

    ratio: float = 0.3
    min_k: int = 1
    method: str = "wta"
    winners: str = "adaptive"
    norm_source: str = "running"
    norm_momentum: float = 0.9
    num_examples: int | None = None
    target_modules: tuple[str, ...] | None = None
    share_inputs: bool = True
    reuse_saved_inputs: bool = True
    bit_masks: bool = True
    attention: str = "memeff"
    compact_activations: bool = True
    compact_dtype: str = "float16"
    fused_norms: bool = True

    def __post_init__(self):
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or math.isnan(self.ratio):
            raise ValueError(f"WTACRSConfig.ratio={self.ratio!r} must be a number in (0, 1]")
        if not 0.0 < float(self.ratio) <= 1.0:
            raise ValueError(f"WTACRSConfig.ratio={self.ratio!r} is outside (0, 1]; e.g. 0.3 keeps 30% of rows")
        if isinstance(self.min_k, bool) or not isinstance(self.min_k, int) or self.min_k < 1:
            raise ValueError(f"WTACRSConfig.min_k={self.min_k!r} must be an integer >= 1")
        _check_choice("method", self.method, METHODS)
        _check_choice("winners", self.winners, WINNER_RULES)
        _check_choice("norm_source", self.norm_source, NORM_SOURCES)
        _check_choice("attention", self.attention, ATTENTION_MODES)
        _check_choice("compact_dtype", self.compact_dtype, COMPACT_DTYPES)
        if not 0.0 <= self.norm_momentum < 1.0:
            raise ValueError(f"WTACRSConfig.norm_momentum={self.norm_momentum!r} must be in [0, 1)")
        if self.norm_source == "example":
            if not isinstance(self.num_examples, int) or self.num_examples < 1:
                raise ValueError(
                    "WTACRSConfig.norm_source='example' needs num_examples (an int >= 1, the dataset size) "
                    f"to size the per-example cache; got num_examples={self.num_examples!r}"
                )
        if self.target_modules is not None:
            targets = self.target_modules
            if isinstance(targets, str) or not all(isinstance(t, str) and t for t in targets):
                raise ValueError(
                    f"WTACRSConfig.target_modules={targets!r} must be a list of non-empty regex strings or None"
                )
            object.__setattr__(self, "target_modules", tuple(targets))

    @property
    def effective_method(self) -> str:
        return "crs" if self.method == "wta" and self.winners == "none" else self.method

    def num_kept(self, n: int) -> int:
        """Rows kept out of n: max(min_k, ceil(ratio * n)), at most n."""
        return min(n, max(self.min_k, math.ceil(float(self.ratio) * n - 1e-9)))

    def short(self) -> str:
        return f"method={self.effective_method}, ratio={self.ratio}, min_k={self.min_k}, norm={self.norm_source}"
