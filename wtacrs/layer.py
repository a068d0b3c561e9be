"""WTACRSLinear: exact forward, exact input/bias gradients, sampled weight gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import linear_ops, row_sources
from .config import WTACRSConfig
from .dispatch import call
from .grad_norm_history import GradNormHistory

_SAMPLE_ATTR = "_wtacrs_sample"


def _compute_dtype(x: Tensor) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and x.dtype.is_floating_point:
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _autocast_copy(t: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    """What autocast hands F.linear (dtype: autocast's, None when it is off), made here, outside
    the op, where autocast no longer reaches and where a memory trace still sees it; None where
    autocast leaves `t` as it is."""
    if dtype is None or t is None or t.dtype == dtype or t.dtype not in _AUTOCAST_ELIGIBLE:
        return None
    return t.to(dtype)


_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)
_TRACED = "traced"


def _share_key(x: Tensor, k: int, method: str, forward_count: list[int]) -> tuple | None:
    """What a sample shared through `x` is valid for, or None where `x` must not carry one.

    Eager: x's version (an in-place change makes the sample stale) and the model's forward count
    (a tensor read again in a later forward, as a batch is, is sampled afresh). While torch.compile
    traces, neither can be read without costing the graph: Dynamo makes `_version` an unbacked
    symbol, whose comparison is a graph break, and guards on the counter's value, which would
    recompile every step. There a sample is shared only through a non-leaf tensor, which this
    forward computed (a leaf, a batch or a parameter, is the same object in the next forward, and
    Dynamo replays the attribute onto it); a traced key never equals an eager one."""
    if not torch.compiler.is_compiling():
        return (k, method, x._version, forward_count[0])
    return None if x.is_leaf else (k, method, _TRACED)


class WTACRSLinear(nn.Module):
    """Drop-in for nn.Linear (weight [out, in]) and Hugging Face Conv1D (weight [in, out]).

    Forward and the input/bias gradients are exact. For the weight gradient only
    k = max(min_k, ceil(ratio * N)) of the N input rows are kept (already scaled, with int32
    indices); layers reading the same tensor share one sample and one copy, and when the
    input's producer already keeps what recomputes it (see `wtacrs.row_sources`), only indices are kept.
    """

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, config: WTACRSConfig, transposed: bool = False):
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.config = config
        self.transposed = transposed
        self.norm_history = GradNormHistory(config.norm_source, config.norm_momentum, config.num_examples)
        self.generator: torch.Generator | None = None
        # Set by apply_wtacrs: a counter the model's forward advances, so layers share a sample
        # only within one forward; a standalone layer draws afresh every call.
        self.forward_count: list[int] | None = None
        # The norm histories of the layers that read the same input and reused this layer's sample last
        # time; their factors join ours, so the shared sample targets all their gradients.
        self.partners: list[GradNormHistory] = []

    @classmethod
    def from_linear(cls, linear: nn.Module, config: WTACRSConfig) -> WTACRSLinear:
        """Wrap `linear`, reusing its Parameters (no copy). The layer holds no reference to `linear`:
        apply_wtacrs keeps it, emptied, for remove_wtacrs."""
        if isinstance(linear, nn.Linear):
            transposed = False
        elif (
            type(linear).__name__ == "Conv1D"
            and getattr(linear, "weight", None) is not None
            and linear.weight.dim() == 2
        ):
            transposed = True
        else:
            raise ValueError(
                f"cannot replace {type(linear).__name__}: WTA-CRS supports nn.Linear and Hugging Face Conv1D"
            )
        return cls(linear.weight, linear.bias, config, transposed).train(linear.training)

    @property
    def in_features(self) -> int:
        return self.weight.shape[0 if self.transposed else 1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[1 if self.transposed else 0]

    def extra_repr(self) -> str:
        kind = "Conv1D" if self.transposed else "Linear"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"from={kind}, {self.config.short()}"
        )

    def forward(self, x: Tensor) -> Tensor:
        if not (torch.is_grad_enabled() and self.weight.requires_grad):
            w = self.weight.t() if self.transposed else self.weight
            return F.linear(x, w, self.bias)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self}: input has {x.shape[-1]} features, expected {self.in_features}")
        n = x.numel() // max(x.shape[-1], 1)
        k = self.config.num_kept(n)
        if k >= n:
            mode, saved, source = "full", [x], None
        else:
            mode, saved, source = self._sample(x, n, k)
        ids = self.norm_history.context()
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        x_cast = _autocast_copy(x, dtype)  # autograd casts its gradient back, as for F.linear's
        with torch.no_grad():  # copies for the forward product; the gradient goes to the weight itself
            cast_w, cast_b = _autocast_copy(self.weight, dtype), _autocast_copy(self.bias, dtype)
        args = linear_ops.LinearArgs(
            x=x if x_cast is None else x_cast, weight=self.weight, bias=self.bias, cast_weight=cast_w, cast_bias=cast_b,
            saved=saved, kept_as=mode, transposed=self.transposed, **linear_ops.source_args(source),
            norm_history=self.norm_history.handle, ids=ids,
        )  # fmt: skip
        return call(linear_ops.linear, *args)

    @torch.no_grad()
    def _sample(self, x: Tensor, n: int, k: int) -> tuple[str, list[Tensor], row_sources.RowSource | None]:
        cfg = self.config
        source = row_sources.source_of(x) if cfg.reuse_saved_inputs else None
        # Sharing saves a second copy of the rows; with a row source there is no copy to save,
        # so each layer draws its own sample with its own gradient factor (lower variance).
        share = cfg.share_inputs and self.forward_count is not None and source is None
        key = _share_key(x, k, cfg.effective_method, self.forward_count) if share else None
        share = key is not None
        if share:
            shared = getattr(x, _SAMPLE_ATTR, None)
            if shared is not None and shared[0] == key:
                plan, owner = shared[1], shared[2]
                if owner is not self and all(t is not self.norm_history for t in owner.partners):
                    owner.partners.append(self.norm_history)
                return plan
        tables, factors = [], []
        for norm_history in (self.norm_history, *self.partners):
            if norm_history.mode == "running":
                table = norm_history.running_table(x.shape, x.device)
                if table is not None:
                    tables.append(table)
            else:
                factor = norm_history.factor(x.shape, x.device)
                if factor is not None:
                    factors.append(factor)
        u = None
        if self.generator is not None and cfg.effective_method != "topk":
            u = torch.rand(k, device=x.device, generator=self.generator, dtype=torch.float32)
        args = linear_ops.SampleRowsArgs(
            x=x, tables=tables, factors=factors, u=u, k=k, method=cfg.effective_method, keep_rows=source is None,
            dtype=_compute_dtype(x),
        )  # fmt: skip
        idx32, scale, kept = call(linear_ops.sample_rows, *args)
        if source is not None:
            plan = ("source", [idx32, scale, *source.tensors], source)
        else:
            plan = ("rows", [idx32, kept], None)
        if share:
            setattr(x, _SAMPLE_ATTR, (key, plan, self))
        return plan
