"""Rows of a tensor that another operator already keeps for its own backward.

A norm or activation whose backward saves enough to recompute its output row by row marks
that output with a `RowSource`. A WTA-CRS layer reading the marked tensor then keeps only the
sampled indices and recomputes its rows in backward, instead of storing a second copy.
Marks live on the tensor object, so a view or a copy (which autograd may not keep) is unmarked
and the layer falls back to storing its rows.

A source is data, not a closure: a kind (how to recompute, registered by the module that makes
such outputs) plus tensors and scalars. That is what lets the layer's backward, a custom op,
take it as arguments, and so trace under FakeTensorMode and torch.compile.

A mark is honoured only under the saved-tensor hooks it was made under. Saved-tensor hooks may
hand back a different tensor object for the same value: non-reentrant checkpointing replays a
region on its inputs as autograd unpacks them, and under any outer `saved_tensors_hooks` (the
profiler's counter) that is a fresh, unmarked tensor. A mark made outside the region would then
choose what the region saves in its forward but not in its replay, and the checkpoint would see
different tensors saved.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

_ATTR = "_wtacrs_row_source"


@dataclass(frozen=True)
class RowSource:
    kind: str  # "<family>:<detail>"; the family names a function given to `register`
    tensors: tuple[Tensor, ...]  # saved by the producer's own backward anyway, in its shapes
    weight: Tensor | None = None  # the producer's parameters, where the recomputation needs them
    bias: Tensor | None = None
    eps: float = 0.0
    dtype: torch.dtype | None = None  # the output's dtype, where it is not the tensors' own


# family -> fn(kind, tensors, idx, weight, bias, eps, dtype) -> rows [k, features]
_RECOMPUTE: dict[str, Callable] = {}


def register(family: str, fn: Callable) -> None:
    _RECOMPUTE[family] = fn


def recompute(kind: str, tensors, idx: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, dtype) -> Tensor:
    """Rows `idx` (int64, of the flattened leading dims) of the output a source describes."""
    return _RECOMPUTE[kind.partition(":")[0]](kind, tuple(tensors), idx, weight, bias, eps, dtype)


def flat_rows(t: Tensor, idx: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1]).index_select(0, idx)


def mark(output: Tensor, source: RowSource) -> Tensor:
    """Mark `output` as recomputable from `source`; only when autograd recorded the producer."""
    if output.requires_grad:
        setattr(output, _ATTR, (output._version, _hooks_ref(), source))
    return output


def _pack_hook() -> Callable | None:
    """The pack hook autograd saves tensors with now: a checkpoint region's own, an outer one, or None."""
    top = torch._C._autograd._top_saved_tensors_default_hooks(True)
    return None if top is None else top[0]


def _hooks_ref() -> Callable[[], Callable | None]:
    hook = _pack_hook()
    try:
        return weakref.ref(hook)  # a mark must not keep a checkpoint region's frame alive
    except TypeError:  # None, or a callable that takes no weak references
        return lambda: hook


def source_of(x: Tensor) -> RowSource | None:
    found = getattr(x, _ATTR, None)
    if found is None or found[0] != x._version:  # modified in place since: rows are stale
        return None
    if found[1]() is not _pack_hook():  # marked in another checkpoint region (or outside one)
        return None
    return found[2]
