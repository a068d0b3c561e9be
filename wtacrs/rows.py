"""Rows of a tensor that another operator already keeps for its own backward.

A norm or activation whose backward saves enough to recompute its output row by row marks
that output with a `RowSource`. A WTA-CRS layer reading the marked tensor then keeps only the
sampled indices and recomputes its rows in backward, instead of storing a second copy.
Marks live on the tensor object, so a view or a copy (which autograd may not keep) is unmarked
and the layer falls back to storing its rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

_ATTR = "_wtacrs_row_source"


@dataclass(frozen=True)
class RowSource:
    tensors: tuple[Tensor, ...]  # saved by the producer's own backward anyway
    rows: Callable[[tuple[Tensor, ...], Tensor], Tensor]  # (tensors, idx) -> rows [k, features]


def mark(output: Tensor, tensors: tuple[Tensor, ...], rows: Callable) -> Tensor:
    """Mark `output` as recomputable from `tensors`; only when autograd recorded the producer."""
    if output.requires_grad:
        setattr(output, _ATTR, (output._version, RowSource(tensors, rows)))
    return output


def source_of(x: Tensor) -> RowSource | None:
    found = getattr(x, _ATTR, None)
    if found is None or found[0] != x._version:  # modified in place since: rows are stale
        return None
    return found[1]
