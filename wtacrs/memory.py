"""Count the bytes autograd keeps for backward, per storage, attributed to modules.

Counting goes through `torch.autograd.graph.saved_tensors_hooks`, so it sees exactly what each
operator saved (custom Functions included); a storage saved twice counts once, and parameters
are excluded. Works on real tensors and under FakeTensorMode.
"""

from __future__ import annotations

import collections
import contextlib
import re
from collections.abc import Callable

import torch
from torch import nn


class SavedTensorCounter:
    """`on_pack` sees every saved tensor too: saved-tensor hooks do not nest (the innermost pair
    alone runs), so an outer hook that must keep seeing them is passed here."""

    def __init__(self, model: nn.Module, on_pack: Callable[[torch.Tensor], object] | None = None):
        self.model = model
        self._on_pack = on_pack
        self.by_module: collections.Counter[str] = collections.Counter()
        self.total = 0
        self._seen: set[int] = set()
        self._params: set[int] = set()
        self._stack: list[str] = []

    def _pack(self, t: torch.Tensor):
        if self._on_pack is not None:
            self._on_pack(t)
        storage = t.untyped_storage()
        key = storage._cdata  # the StorageImpl: shared by views, defined for fake tensors too
        if storage.nbytes() and key not in self._seen and key not in self._params:
            self._seen.add(key)
            self.total += storage.nbytes()
            self.by_module[self._stack[-1] if self._stack else "<top>"] += storage.nbytes()
        return t

    def _enter(self, name: str) -> None:
        self._stack.append(name)

    def _exit(self) -> None:
        self._stack.pop()

    @contextlib.contextmanager
    def track(self):
        self._params = {p.untyped_storage()._cdata for p in self.model.parameters()}
        self._params |= {b.untyped_storage()._cdata for b in self.model.buffers()}
        handles = []
        for name, module in self.model.named_modules():
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: self._enter(n)))
            handles.append(module.register_forward_hook(lambda m, a, o: self._exit()))
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                yield self
        finally:
            for h in handles:
                h.remove()

    def grouped(self) -> dict[str, int]:
        """Bytes per module path with layer indices folded (encoder.layer.*.intermediate...)."""
        out: collections.Counter[str] = collections.Counter()
        for name, nbytes in self.by_module.items():
            out[re.sub(r"\.\d+\.", ".*.", name)] += nbytes
        return dict(out)


def op_reference(func) -> Callable | None:
    """The PyTorch implementation of a `wtacrs::` custom op (an OpOverload), or None for any other op.

    Each of these ops dispatches once but allocates its intermediates as this code does (on a GPU
    too: it is what runs there). A dispatch-level storage tracer that calls it in place of the op,
    with itself still active, counts those intermediates; one that calls the op sees its outputs only.
    """
    if getattr(func, "namespace", None) != "wtacrs":
        return None
    from torch._library.custom_ops import _maybe_get_opdef

    opdef = _maybe_get_opdef(func)
    return None if opdef is None else opdef._init_fn
