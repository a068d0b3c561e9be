"""Live-storage accounting through the dispatcher: every tensor storage an op creates is counted
until it is freed. Runs on real tensors and under FakeTensorMode (where it is the estimate).

The live storages at the peak itself are kept (see `_leave_peak`) and classified as parameters,
gradients, optimizer state, saved activations or other, from what was seen: parameters at start,
gradients from post-accumulate hooks, optimizer state after each step, activations from the
saved-tensor pack hook. The breakdown therefore sums to `peak`, to the byte.

With `record=True` it also keeps its accounting as an event log (`instruments/replay.py`): what
it counted, in order, in bytes before rounding, from which the peak at another batch is predicted.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from array import array

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from contract.rows import CATEGORIES

from .replay import ALLOC, FREE, RESET, RESIZE, STEP, EventLog


def _storage(t: torch.Tensor):
    return t.untyped_storage()


@contextlib.contextmanager
def _no_collection():
    """With the collector off: a collection it triggered could run a storage's finalizer (`_free`)
    and change what is being read (`live`, the event log) meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class StorageTracker(TorchDispatchMode):
    def __init__(self, block: int = 1, device_type: str | None = None, record: bool = False):
        super().__init__()
        # the event log's columns (kind, generation, bytes before rounding), or None: not recording
        self._events = (array("b"), array("q"), array("q")) if record else None
        self.block = block  # storages are counted in multiples of this (a caching allocator's block)
        self.device_type = device_type  # count only storages on this kind of device (None: all)
        self.live: dict[int, tuple[int, int]] = {}  # storage key -> (nbytes, generation)
        self.current = 0
        self.peak = 0
        self._peak_snapshot: dict[int, tuple[int, int]] = {}  # `live` at the peak
        self._at_peak = False  # nothing was freed or shrunk since `current` last became `peak`
        self._gen = 0
        self.kind: dict[tuple[int, int], str] = {}  # (key, generation) -> category
        self._first_kinds: dict[int, int] | None = None  # generation -> category at the first step's end

    # -- accounting -------------------------------------------------------------------------
    # The composition at the peak is what `live` holds at the last moment `current` equals `peak`.
    # Between a new peak and the first free (or shrink) after it nothing but growth happens, and
    # growth makes a new peak, so that moment is just before that first free: the snapshot is taken
    # there, once per peak that is left, and never on the way up (where every allocation is a peak).
    def track(self, t: torch.Tensor) -> tuple[int, int] | None:
        if not isinstance(t, torch.Tensor) or t.is_meta:
            return None
        if self.device_type is not None and t.device.type != self.device_type:
            return None
        st = _storage(t)
        key = st._cdata
        found = self.live.get(key)
        if found is not None:
            return key, found[1]
        raw = st.nbytes()
        nbytes = -(-raw // self.block) * self.block
        self._gen += 1
        self._log(ALLOC, self._gen, raw)
        self.live[key] = (nbytes, self._gen)
        weakref.finalize(st, self._free, key, self._gen)
        self._grow(nbytes)
        return key, self._gen

    def _grow(self, nbytes: int) -> None:
        self.current += nbytes
        if self.current > self.peak:  # the first moment at a new peak; a return to it adds nothing
            self.peak = self.current
            self._at_peak = True

    def _leave_peak(self) -> None:
        """Call before `live` loses bytes: keeps the composition of a peak about to be left."""
        if self._at_peak:
            self._at_peak = False
            self._peak_snapshot = self._copy_live()

    def _copy_live(self) -> dict[int, tuple[int, int]]:
        with _no_collection():
            return self.live.copy()

    def _free(self, key: int, gen: int) -> None:
        found = self.live.get(key)
        if found is not None and found[1] == gen:
            self._log(FREE, gen, 0)
            self._leave_peak()
            del self.live[key]
            self.current -= found[0]

    def resized(self, key: int, nbytes: int) -> None:
        """A live storage now holds nbytes (UntypedStorage.resize_, which the dispatcher does not see)."""
        found = self.live.get(key)
        if found is None:
            return
        self._log(RESIZE, found[1], nbytes)
        nbytes = -(-nbytes // self.block) * self.block
        if nbytes < found[0]:
            self._leave_peak()
        self.live[key] = (nbytes, found[1])
        self.current -= found[0]
        self._grow(nbytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out

    def reset_peak(self) -> None:
        self._log(RESET, 0, 0)
        self.peak = self.current
        self._at_peak = True

    def step_ended(self) -> None:
        """Marks the first step's end in the event log, where its peak and breakdown are read: with
        the categories known then (a storage may be classified later, in the steady step)."""
        if self._events is not None:
            self._log(STEP, 0, 0)
            self._first_kinds = self._categories()

    def _categories(self) -> dict[int, int]:
        return {gen: CATEGORIES.index(name) for (_, gen), name in self.kind.items()}

    def _log(self, kind: int, gen: int, raw: int) -> None:
        if self._events is not None:
            kinds, gens, sizes = self._events
            kinds.append(kind)
            gens.append(gen)
            sizes.append(raw)

    @property
    def position(self) -> int:
        """How many events the log holds so far (0 when not recording)."""
        return len(self._events[0]) if self._events is not None else 0

    def event_log(self, fixed: int = 0, rewrite=None) -> EventLog | None:
        """What this tracker counted, as an event log of batch size 0 for the caller to label (None
        unless recording); `fixed`: bytes the reported peak holds beyond the tracker's (workspaces).
        `rewrite(kinds, gens, sizes, category, first_category)` may give the log other columns and
        categories (instruments/second_step.py); where it gives None, so does this, and the tracker
        goes on recording."""
        if self._events is None:
            return None
        with _no_collection():
            kinds, gens, sizes = (np.array(c, dtype=d) for c, d in zip(self._events, (np.int8, np.int64, np.int64)))
            category, first = self._categories(), self._first_kinds
        if rewrite is not None:
            done = rewrite(kinds, gens, sizes, category, first or {})
            if done is None:
                return None
            kinds, gens, sizes, category = done
        self._events = None  # the log ends here (what is freed later is no step's)
        columns = (c.tolist() for c in (kinds, gens, sizes))
        return EventLog.of(0, *columns, block=self.block, fixed=fixed, category=category, first_category=first)

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
        """Bytes at the peak by category; they sum to `peak`."""
        if self._at_peak:  # the peak is now
            self._peak_snapshot = self._copy_live()
        out = dict.fromkeys(CATEGORIES, 0)
        for key, (nbytes, gen) in self._peak_snapshot.items():
            out[self.kind.get((key, gen), "other")] += nbytes
        return out
