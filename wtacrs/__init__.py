"""WTA-CRS: winner-take-all column-row sampling for memory-efficient fine-tuning.

The names below load on first use. The family registry (`wtacrs.families`) is read by job-spec
validation on the API server, which has no torch; an eager import here would pull torch in there.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

# public name -> submodule that defines it
_HOME = {
    "WTACRSConfig": "config",
    "WTACRSLinear": "layer",
    "DEFAULT_TARGETS": "patch",
    "apply_wtacrs": "patch",
    "remove_wtacrs": "patch",
    "wtacrs_layers": "patch",
    "cache_bytes": "patch",
    "estimate_matmul": "estimator",
    "pair_weights": "estimator",
    "sampling_plan": "estimator",
    "expected_squared_error": "estimator",
    "example_ids": "grad_norm_history",
    "op_reference": "memory",
    "MEFTConfig": "meft",
    "apply_meft": "meft",
    "apply_offload": "offload",
    "remove_offload": "offload",
}
__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'wtacrs' has no attribute {name!r}")
    value = getattr(import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ serves these
    from .config import WTACRSConfig  # noqa: F401
    from .estimator import estimate_matmul, expected_squared_error, pair_weights, sampling_plan  # noqa: F401
    from .grad_norm_history import example_ids  # noqa: F401
    from .layer import WTACRSLinear  # noqa: F401
    from .meft import MEFTConfig, apply_meft  # noqa: F401
    from .memory import op_reference  # noqa: F401
    from .offload import apply_offload, remove_offload  # noqa: F401
    from .patch import DEFAULT_TARGETS, apply_wtacrs, cache_bytes, remove_wtacrs, wtacrs_layers  # noqa: F401
