"""WTA-CRS: winner-take-all column-row sampling for memory-efficient fine-tuning."""

from .config import WTACRSConfig
from .estimator import estimate_matmul, expected_squared_error, pair_weights, sampling_plan
from .layer import WTACRSLinear
from .norms import example_ids
from .patch import DEFAULT_TARGETS, apply_wtacrs, cache_bytes, remove_wtacrs, wtacrs_layers

__all__ = [
    "WTACRSConfig",
    "WTACRSLinear",
    "DEFAULT_TARGETS",
    "apply_wtacrs",
    "remove_wtacrs",
    "wtacrs_layers",
    "cache_bytes",
    "estimate_matmul",
    "pair_weights",
    "sampling_plan",
    "expected_squared_error",
    "example_ids",
]
