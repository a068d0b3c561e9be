"""Who saved what for backward: a saved-tensor counter that records, per storage, the module and
the op that saved it, and the bounded tables made of those records (producers/attribution.py runs
one forward and backward of a trial with it, in any mode). The profiler's `SavedTensorCounter` sees every saved tensor
through its saved-tensor hook (hooks do not nest, so it is the one hook, and it forwards to the
storage tracker as in `measure_memory`); this subclass also records, for each storage it counts,
the module whose forward was running and the op that saved it. Each storage is counted once, by
its first saver, exactly as `activation_bytes` counts it: the raw total equals that number.

The op is the outermost torch function being executed when autograd saved the tensor (`linear`,
`matmul`, `softmax`, `native_dropout`, `_scaled_dot_product_efficient_attention`, ...; a
TorchFunctionMode, which works under FakeTensorMode too), or, for a custom autograd Function,
the Function's class (`WTACRSLinearFn`, ...; a `torch.library` custom op's name, `wtacrs::linear`,
for the Function torch generates for its autograd), whose tensors autograd packs from
inside `Function.apply`, where no torch function is running; `checkpoint_inputs` for what
gradient checkpointing keeps of a region (its inputs; what the region saves is recomputed).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import sys

import torch
from torch.overrides import TorchFunctionMode

from wtacrs.memory import SavedTensorCounter

MIB = 2**20
TOP_MODULES = 200
TOP_OPS = 50
TOP_GROUPS = 50
OTHER = "(other)"
OUTSIDE = "<top>"  # saved while no module's forward was running (SavedTensorCounter's name)
_APPLY = torch.autograd.Function.apply.__func__.__code__


class _OutermostFunction(TorchFunctionMode):
    """Which torch function is being executed (nested calls run with the mode off: outermost)."""

    def __init__(self):
        super().__init__()
        self.current: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        outer, self.current = self.current, _name(func)
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.current = outer


_TORCH_FUNCTION = _OutermostFunction.__torch_function__.__code__
_GENERATED = "GeneratedBackwardFor_"
_CHECKPOINT = os.path.join("torch", "utils", "checkpoint.py")


def _name(func) -> str:
    name = getattr(func, "__name__", None) or str(func)
    return name.split(".")[0] if "." in name and not name.startswith(".") else name


def _saver_from_frames(depth: int = 4) -> str | None:
    """Who packs tensors outside any torch function: a custom autograd Function's `apply` (its
    class), or torch.utils.checkpoint saving a checkpointed region's inputs."""
    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None or frame.f_code is _TORCH_FUNCTION:
            return None
        if frame.f_code is _APPLY:
            caller = frame.f_back
            if caller is not None and caller.f_code.co_filename.endswith(_CHECKPOINT):
                # reentrant checkpointing holds a region's inputs by applying its CheckpointFunction
                return "checkpoint_inputs"
            return _function_name(frame)
        if frame.f_code.co_filename.endswith(_CHECKPOINT):
            return "checkpoint_inputs"
        frame = frame.f_back
    return None


def _function_name(apply_frame) -> str:
    """A custom Function's class name; for a torch.library custom op's generated Function
    (GeneratedBackwardFor_<ns>_<op>_<overload>) the op's name, read from its autograd kernel."""
    cls = apply_frame.f_locals.get("cls")
    if isinstance(getattr(cls, "op_name", None), str):  # a wtacrs custom op traced op by op (wtacrs/dispatch.py)
        return cls.op_name
    name = cls.__name__ if cls is not None else "Function"
    if name.startswith(_GENERATED):
        caller = apply_frame.f_back
        for _ in range(3):  # autograd_impl, or a supports_tensorlist wrapper first
            if caller is None:
                break
            op = caller.f_locals.get("op")
            if isinstance(op, torch._ops.OpOverload):
                return f"{op._namespace}::{op._opname}"
            caller = caller.f_back
        # torch 2.11's autograd_impl does not read `op` itself (no local then): the generated
        # Function's forward closes over it (through supports_tensorlist's wrapper, where there is one)
        op = _closure_op(getattr(cls, "forward", None))
        if op is not None:
            return f"{op._namespace}::{op._opname}"
        return name[len(_GENERATED) :].removesuffix("_default")
    return name.lstrip("_")


def _closure_op(fn, depth: int = 3):
    """The OpOverload a function closes over, looking through up to `depth` nested closures."""
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, torch._ops.OpOverload):
            return value
        if depth and callable(value) and getattr(value, "__closure__", None):
            found = _closure_op(value, depth - 1)
            if found is not None:
                return found
    return None


class AttributingCounter(SavedTensorCounter):
    """A SavedTensorCounter that also keeps, per counted storage, (module path, op, bytes)."""

    def __init__(self, model: torch.nn.Module, on_pack=None):
        super().__init__(model, on_pack=on_pack)
        self.records: list[tuple[str, str, int]] = []
        self._ops = _OutermostFunction()

    def _pack(self, t: torch.Tensor):
        before = self.total
        out = super()._pack(t)
        if self.total != before:  # counted now: this storage's first saver
            op = _saver_from_frames() or self._ops.current or "(unknown)"
            self.records.append((self._stack[-1] if self._stack else OUTSIDE, op, self.total - before))
        return out

    @contextlib.contextmanager
    def track(self):
        with super().track(), self._ops:
            yield self


def _block(nbytes: int, block: int) -> int:
    return -(-nbytes // block) * block


def _top(counter: dict[str, int], n: int) -> dict[str, int]:
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    out = dict(ranked[:n])
    rest = sum(v for _, v in ranked[n:])
    if rest:
        out[OTHER] = out.get(OTHER, 0) + rest
    return out


def summarise(records, model: torch.nn.Module, block: int = 1, top: int = TOP_MODULES) -> dict:
    """Records (module, op, raw bytes) as the bounded, JSON-ready tables of `attribute`."""
    types = {name: type(m).__name__ for name, m in model.named_modules()}
    per_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    ops: collections.Counter = collections.Counter()
    groups: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    raw = 0
    for module, op, nbytes in records:
        b = _block(nbytes, block)
        raw += nbytes
        per_module[module][op] += b
        ops[op] += b
        groups[re.sub(r"\.\d+(?=\.|$)", ".*", module)][op] += b
    ranked = sorted(per_module.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    modules = [
        {"module": name, "type": types.get(name, ""), "bytes": sum(c.values()), "ops": _top(c, TOP_OPS)}
        for name, c in ranked[:top]
    ]
    rest: collections.Counter = collections.Counter()
    for _, c in ranked[top:]:
        rest.update(c)
    if rest:
        modules.append({"module": OTHER, "type": "", "bytes": sum(rest.values()), "ops": _top(rest, TOP_OPS)})
    grouped = sorted(groups.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    return {
        "total_bytes": sum(ops.values()),
        "raw_bytes": raw,
        "block_bytes": block,
        "modules": modules,
        "module_count": len(per_module),
        "ops": _top(ops, TOP_OPS),
        "groups": [
            {"module": name, "bytes": sum(c.values()), "ops": _top(c, TOP_OPS)} for name, c in grouped[:TOP_GROUPS]
        ],
    }
