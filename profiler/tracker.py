"""Live-storage accounting through the dispatcher: every tensor storage an op creates is counted
until it is freed. Runs on real tensors and under FakeTensorMode (where it is the estimate).

At the peak, live storages are classified as parameters, gradients, optimizer state, saved
activations or other, from what was seen: parameters at start, gradients from post-accumulate
hooks, optimizer state after each step, activations from the saved-tensor pack hook.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from contract.rows import CATEGORIES


def _storage(t: torch.Tensor):
    return t.untyped_storage()


class StorageTracker(TorchDispatchMode):
    def __init__(self, block: int = 1):
        super().__init__()
        self.block = block  # storages are counted in multiples of this (a caching allocator's block)
        self.live: dict[int, tuple[int, int]] = {}  # storage key -> (nbytes, generation)
        self.current = 0
        self.peak = 0
        self._peak_snapshot: list[tuple[int, int]] = []
        self._snap_at = 0
        self._gen = 0
        self.kind: dict[tuple[int, int], str] = {}  # (key, generation) -> category

    # -- accounting -------------------------------------------------------------------------
    def track(self, t: torch.Tensor) -> tuple[int, int] | None:
        if not isinstance(t, torch.Tensor) or t.is_meta:
            return None
        st = _storage(t)
        key = st._cdata
        found = self.live.get(key)
        if found is not None:
            return key, found[1]
        nbytes = -(-st.nbytes() // self.block) * self.block
        self._gen += 1
        self.live[key] = (nbytes, self._gen)
        self.current += nbytes
        weakref.finalize(st, self._free, key, self._gen)
        if self.current > self.peak:
            self.peak = self.current
            if self.current > self._snap_at * 1.001:  # re-snapshot only when the peak grew 0.1%
                self._snap_at = self.current
                self._peak_snapshot = list(self.live.items())
        return key, self._gen

    def _free(self, key: int, gen: int) -> None:
        found = self.live.get(key)
        if found is not None and found[1] == gen:
            del self.live[key]
            self.current -= found[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out

    def reset_peak(self) -> None:
        self.peak = self._snap_at = self.current
        self._peak_snapshot = list(self.live.items())

    # -- classification ---------------------------------------------------------------------
    def mark(self, tensors, category: str) -> None:
        for t in tensors:
            ident = self.track(t)
            if ident is not None and ident not in self.kind:
                self.kind[ident] = category

    @contextlib.contextmanager
    def watch(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """Track and classify while a training step runs."""
        self.mark(list(model.parameters()), "parameters")
        self.mark(list(model.buffers()), "other")
        hooks = [
            p.register_post_accumulate_grad_hook(lambda p: self.mark([p.grad], "gradients"))
            for p in model.parameters()
            if p.requires_grad
        ]

        def pack(t):
            self.saved(t)
            return t

        hooks.append(optimizer.register_step_post_hook(lambda opt, a, k: self._mark_optimizer(opt)))
        try:
            with self, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                yield self
        finally:
            for h in hooks:
                h.remove()

    def saved(self, t: torch.Tensor) -> None:
        """What autograd saves for backward is an activation, whichever module saved it."""
        ident = self.track(t)
        if ident is not None and ident not in self.kind:
            self.kind[ident] = "activations"

    def _mark_optimizer(self, optimizer) -> None:
        for state in optimizer.state.values():
            self.mark([v for v in state.values() if isinstance(v, torch.Tensor)], "optimizer_state")

    def peak_breakdown(self) -> dict[str, int]:
        out = dict.fromkeys(CATEGORIES, 0)
        for key, (nbytes, gen) in self._peak_snapshot:
            out[self.kind.get((key, gen), "other")] += nbytes
        return out
