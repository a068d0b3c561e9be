"""Row sources: rows of a tensor that another operator already keeps for its own backward.

(Not the result rows of `contract/rows.py`, which are measurements; a row here is one token's
feature vector, a row of the flattened [N, features] input of a linear layer.)

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

Under torch.compile the checks are made while tracing, once: Dynamo turns `_version` into an
unbacked symbol (comparing two is a graph break) and cannot call the hooks query. A mark made while
compiling is honoured only by a layer traced in the same compiled graph (a graph is traced as a
whole, and a checkpointed region is recomputed by the graph, never replayed on other tensors), and
never by eager code, nor an eager mark by compiled code: across a graph break the layer keeps its
rows (correct, only less saving). What a trace cannot see is an in-place change of the marked output
between its producer and the layer, which no supported model makes (an eager run still checks it).
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


def _traced() -> object:
    return _traced  # what a mark made while compiling has for its hooks: nothing eager ever is


def attributable(t: Tensor) -> Tensor:
    """`t`, or while compiling a view of it. Dynamo refuses an attribute (a row mark, a layer's
    shared sample) on one tensor of an op's tuple of outputs (a custom op's (y, saved) pair, a
    split) and would break the graph there; a view of it takes one (no copy: the same storage, one
    alias in the graph)."""
    return t.view_as(t) if torch.compiler.is_compiling() else t


def mark(output: Tensor, source: RowSource) -> Tensor:
    """Mark `output` as recomputable from `source`; only when autograd recorded the producer.
    Use the tensor it returns: while compiling, that is a marked alias of `output` (`attributable`;
    unmarked outputs too, such as a frozen norm's under LoRA: a WTA-CRS layer reading one attaches
    its shared sample to it)."""
    if torch.compiler.is_compiling():
        output = attributable(output)
        if output.requires_grad:
            setattr(output, _ATTR, (None, _traced, source))
    elif output.requires_grad:
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
    if found is None:
        return None
    if torch.compiler.is_compiling():  # marked in this graph (module docstring)
        return found[2] if found[1] is _traced else None
    if found[0] != x._version:  # modified in place since: rows are stale
        return None
    if found[1]() is not _pack_hook():  # marked in another checkpoint region (or outside one)
        return None
    return found[2]
