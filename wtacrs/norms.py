"""The output-gradient factor of the sampling probability, p_i ∝ ||x_i|| * g_i.

g_i is not known in forward (the sample is drawn before backward), so it comes from the past:
nothing ("activation"), a per-position running mean ("running"), or the paper's per-example
cache of the norms seen the last time that example went through ("example"). Any positive g
keeps the estimator unbiased because the scale uses the same probabilities; g only changes
the variance. A small floor keeps g_i > 0 where the history says zero.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import Tensor

_EXAMPLE_IDS: contextvars.ContextVar[Tensor | None] = contextvars.ContextVar("wtacrs_example_ids", default=None)
_FLOOR = 0.2  # defensive mixture: g + 0.2 * mean(g) bounds the variance when history misleads


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


class GradNormTracker:
    """Per-layer history of output-gradient row norms; tensors live on the input's device."""

    def __init__(self, mode: str, momentum: float = 0.9, num_examples: int | None = None):
        self.mode = mode
        self.momentum = momentum
        self.num_examples = num_examples
        self.table: Tensor | None = None  # running: [L]; example: [num_examples, L] bf16
        self.seen: Tensor | None = None  # example: [num_examples] bool
        self.mean: Tensor | None = None  # example: running mean norm, for unseen examples
        self.initialized = False

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
        self.table = table

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
            g = self.table[:seq].unsqueeze(0).expand(batch, seq)
        else:
            ids = self._ids(batch, device)
            cached = self.table[ids, :seq].float()
            g = torch.where(self.seen[ids].unsqueeze(1), cached, self.mean)
        g = g + _FLOOR * g.mean() + torch.finfo(torch.float32).tiny
        return g.reshape(-1)

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
        if self.mode == "activation":
            return
        bl = _batch_positions(x_shape)
        if bl is None:
            return
        batch, seq = bl
        self._ensure(seq, grad_out.device)
        norms = torch.linalg.vector_norm(grad_out.float(), dim=-1).reshape(batch, seq)
        m = self.momentum
        if self.mode == "running":
            row = norms.mean(0)
            if self.initialized:
                self.table[:seq].mul_(m).add_(row, alpha=1 - m)
            else:
                self.table[:seq].copy_(row)
        else:
            ids = ids.to(device=grad_out.device, dtype=torch.long)
            self.table[ids, :seq] = norms.to(self.table.dtype)
            self.seen[ids] = True
            if self.initialized:
                self.mean.mul_(m).add_(norms.mean(), alpha=1 - m)
            else:
                self.mean.copy_(norms.mean())
        self.initialized = True
