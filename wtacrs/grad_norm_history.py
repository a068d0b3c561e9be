"""The output-gradient factor of the sampling probability, p_i ∝ ||x_i|| * g_i.

g_i is not known in forward (the sample is drawn before backward), so it comes from the past:
nothing ("activation"), a per-position running mean ("running"), or the paper's per-example
cache of the norms seen the last time that example went through ("example"). Any positive g
keeps the estimator unbiased because the scale uses the same probabilities; g only changes
the variance. A small floor keeps g_i > 0 where the history says zero.

This is the gradient-norm history; the model's normalisation layers are `wtacrs.norm_layers`.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import weakref

import torch
from torch import Tensor

_EXAMPLE_IDS: contextvars.ContextVar[Tensor | None] = contextvars.ContextVar("wtacrs_example_ids", default=None)
_FLOOR = 0.2  # defensive mixture: g + 0.2 * mean(g) bounds the variance when history misleads
_HISTORIES: weakref.WeakValueDictionary[int, GradNormHistory] = weakref.WeakValueDictionary()
_HANDLES = itertools.count()


@contextlib.contextmanager
def example_ids(ids: Tensor):
    """Tell the layers which dataset examples the batch holds (shape [batch], int), for norm_source='example'."""
    if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.dtype.is_floating_point:
        raise ValueError(f"example_ids needs a 1-D integer tensor of dataset indices, got {ids!r:.80}")
    token = _EXAMPLE_IDS.set(ids)
    try:
        yield
    finally:
        _EXAMPLE_IDS.reset(token)


def _batch_positions(shape: torch.Size) -> tuple[int, int] | None:
    if len(shape) < 3:
        return None
    seq = shape[-2]
    return (int(torch.Size(shape[:-2]).numel()), seq)


class GradNormHistory:
    """Per-layer history of output-gradient row norms; tensors live on the input's device."""

    def __init__(self, mode: str, momentum: float = 0.9, num_examples: int | None = None):
        self.mode = mode
        self.momentum = momentum
        self.num_examples = num_examples
        self.table: Tensor | None = None  # running: [L]; example: [num_examples, L] bf16
        self.seen: Tensor | None = None  # example: [num_examples] bool
        self.mean: Tensor | None = None  # example: running mean norm, for unseen examples
        # whether an update has run, as a tensor: backward updates it inside one op, with no host
        # branch, so a compiled backward stays right after its first step (bookkeeping: not in nbytes)
        self.started: Tensor | None = None
        self._register()

    def _register(self) -> None:
        # what the backward op names this history by (-1: nothing to track)
        self.handle = -1 if self.mode == "activation" else next(_HANDLES)
        if self.handle >= 0:
            _HISTORIES[self.handle] = self

    def __setstate__(self, state: dict) -> None:
        # a copy (copy.deepcopy, pickle) is another history: it gets its own handle
        self.__dict__.update(state)
        self._register()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.table, self.seen, self.mean) if t is not None)

    def _ensure(self, seq: int, device: torch.device) -> None:
        if self.table is not None and self.table.shape[-1] >= seq and self.table.device == device:
            return
        old = self.table
        if self.mode == "running":
            table = torch.ones(seq, device=device)
        else:
            table = torch.zeros(self.num_examples, seq, device=device, dtype=torch.bfloat16)
            if self.seen is None or self.seen.device != device:
                self.seen = torch.zeros(self.num_examples, dtype=torch.bool, device=device)
                self.mean = torch.ones((), device=device)
        if old is not None and old.device == device:
            table[..., : old.shape[-1]] = old
        if self.started is None or self.started.device != device:
            self.started = torch.zeros((), dtype=torch.bool, device=device)
        self.table = table

    def running_table(self, x_shape: torch.Size, device: torch.device) -> Tensor | None:
        """The running table the sampling op turns into g itself (one op, not a few per layer)."""
        if self.mode != "running" or _batch_positions(x_shape) is None:
            return None
        self._ensure(x_shape[-2], device)
        return self.table

    def factor(self, x_shape: torch.Size, device: torch.device) -> Tensor | None:
        """g for each of the N flattened rows, or None when there is no history to use."""
        if self.mode == "activation":
            return None
        bl = _batch_positions(x_shape)
        if bl is None:
            return None
        batch, seq = bl
        self._ensure(seq, device)
        if self.mode == "running":
            return running_factor(self.table, x_shape)
        ids = self._ids(batch, device)
        cached = self.table[ids, :seq].float()
        g = torch.where(self.seen[ids].unsqueeze(1), cached, self.mean)
        return _floored(g).reshape(-1)

    def _ids(self, batch: int, device: torch.device) -> Tensor:
        ids = _EXAMPLE_IDS.get()
        if ids is None:
            raise ValueError(
                "norm_source='example' needs the batch's dataset indices: run forward inside "
                "`with wtacrs.example_ids(ids):` (ids: 1-D int tensor, one per example)"
            )
        if ids.numel() != batch:
            raise ValueError(f"example_ids has {ids.numel()} ids but the batch has {batch} examples")
        return ids.to(device=device, dtype=torch.long)

    def context(self) -> Tensor | None:
        """What backward needs to know about this forward (the example ids)."""
        return _EXAMPLE_IDS.get() if self.mode == "example" else None

    @torch.no_grad()
    def update(self, grad_out: Tensor, x_shape: torch.Size, ids: Tensor | None) -> None:
        """Fold the step's output gradient in; `ids` are the example ids its forward saw."""
        if self.mode == "activation" or _batch_positions(x_shape) is None:
            return
        if self.mode == "example" and ids is None:
            return  # a forward outside `example_ids` (one that did not sample): nothing to key by
        self._ensure(x_shape[-2], grad_out.device)
        state = [self.table, self.started] + ([self.seen, self.mean] if self.mode == "example" else [])
        update_state(state, grad_out, list(x_shape), ids, self.momentum)


def _floored(g: Tensor) -> Tensor:
    return g + _FLOOR * g.mean() + torch.finfo(torch.float32).tiny


def running_factor(table: Tensor, x_shape) -> Tensor:
    """g for each flattened row of an input of `x_shape` from a running table (shape [>= seq])."""
    batch, seq = _batch_positions(x_shape)
    return _floored(table[:seq].unsqueeze(0).expand(batch, seq)).reshape(-1)


def update_norm_history(handle: int, grad_out: Tensor, x_shape: list[int], ids: Tensor | None) -> None:
    norm_history = _HISTORIES.get(handle)
    if norm_history is not None:
        norm_history.update(grad_out, torch.Size(x_shape), ids)


def update_state(
    state: list[Tensor], grad_out: Tensor, x_shape: list[int], ids: Tensor | None, momentum: float
) -> None:
    """Fold this step's ||dY_i|| into a history's `state` in place, without reading a value on the
    host: the first update copies (the `started` flag picks it with a `where`)."""
    batch, seq = _batch_positions(x_shape)
    norms = torch.linalg.vector_norm(grad_out, dim=-1, dtype=torch.float32).reshape(batch, seq)
    table, started = state[0], state[1]
    m = momentum
    if len(state) == 2:  # running
        row = norms.mean(0)
        current = table[:seq]
        current.copy_(torch.where(started, current * m + row * (1 - m), row))
    else:  # example
        seen, mean = state[2], state[3]
        ids = ids.to(device=grad_out.device, dtype=torch.long)
        table[ids, :seq] = norms.to(table.dtype)
        seen[ids] = True
        batch_mean = norms.mean()
        mean.copy_(torch.where(started, mean * m + batch_mean * (1 - m), batch_mean))
    started.fill_(True)
