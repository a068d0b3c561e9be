"""WTACRSLinear: exact forward, exact input/bias gradients, sampled weight gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import rows as row_sources
from .config import WTACRSConfig
from .estimator import sampling_plan
from .norms import GradNormTracker

_SAMPLE_ATTR = "_wtacrs_sample"


def _compute_dtype(x: Tensor) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and x.dtype.is_floating_point:
        return torch.get_autocast_dtype(dev)
    return x.dtype


@dataclass
class _Plan:
    """What backward needs besides saved tensors (none of it holds activation memory)."""

    mode: str  # "full": saved x; "rows": saved idx + scaled rows; "source": saved idx, scale + source tensors
    x_shape: torch.Size
    transposed: bool
    source: row_sources.RowSource | None
    tracker: GradNormTracker
    ids: Tensor | None


class _WTACRSLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, plan: _Plan, *saved):
        ctx.plan = plan
        ctx.has_bias = bias is not None
        ctx.save_for_backward(weight, *saved)
        w = weight.t() if plan.transposed else weight
        return F.linear(x, w, bias)

    @staticmethod
    def backward(ctx, grad_out):
        plan: _Plan = ctx.plan
        weight, *saved = ctx.saved_tensors
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w = weight.to(g2.dtype)
            grad_x = (g2 @ w.t() if plan.transposed else g2 @ w).reshape(plan.x_shape)
        if ctx.needs_input_grad[1]:
            if plan.mode == "full":
                kept_g, kept_x = g2, saved[0].reshape(-1, plan.x_shape[-1])
            elif plan.mode == "rows":
                idx, kept_x = saved
                kept_g = g2.index_select(0, idx)
            else:
                idx, scale, *src = saved
                kept_g = g2.index_select(0, idx)
                kept_x = plan.source.rows(tuple(src), idx.long()) * scale.unsqueeze(1)
            kept_x = kept_x.to(g2.dtype)
            gw = kept_x.t() @ kept_g if plan.transposed else kept_g.t() @ kept_x
            grad_w = gw.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        plan.tracker.update(g2, plan.x_shape, plan.ids)
        return (grad_x, grad_w, grad_b, None) + (None,) * len(saved)


class WTACRSLinear(nn.Module):
    """Drop-in for nn.Linear (weight [out, in]) and Hugging Face Conv1D (weight [in, out]).

    Forward and the input/bias gradients are exact. For the weight gradient only
    k = max(min_k, ceil(ratio * N)) of the N input rows are kept (already scaled, with int32
    indices); layers reading the same tensor share one sample and one copy, and when the
    input's producer already keeps what recomputes it (see `wtacrs.rows`), only indices are kept.
    """

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, config: WTACRSConfig, transposed: bool = False):
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.config = config
        self.transposed = transposed
        self.tracker = GradNormTracker(config.norm_source, config.norm_momentum, config.num_examples)
        self.generator: torch.Generator | None = None
        # Set by apply_wtacrs: a counter the model's forward advances, so layers share a sample
        # only within one forward; a standalone layer draws afresh every call.
        self.forward_count: list[int] | None = None
        # Trackers of the layers that read the same input and reused this layer's sample last
        # time; their factors join ours, so the shared sample targets all their gradients.
        self.partners: list[GradNormTracker] = []

    @classmethod
    def from_linear(cls, linear: nn.Module, config: WTACRSConfig) -> WTACRSLinear:
        """Wrap `linear`, reusing its Parameters (no copy); `remove_wtacrs` gives the original back."""
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
        layer = cls(linear.weight, linear.bias, config, transposed)
        object.__setattr__(layer, "original", linear)  # not a submodule: keeps state_dict keys unchanged
        return layer.train(linear.training)

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
        plan = _Plan("full", x.shape, self.transposed, None, self.tracker, self.tracker.context())
        if k >= n:
            return _WTACRSLinearFn.apply(x, self.weight, self.bias, plan, x)
        saved = self._sample(x, n, k, plan)
        return _WTACRSLinearFn.apply(x, self.weight, self.bias, plan, *saved)

    @torch.no_grad()
    def _sample(self, x: Tensor, n: int, k: int, plan: _Plan) -> tuple[Tensor, ...]:
        cfg = self.config
        source = row_sources.source_of(x) if cfg.reuse_saved_inputs else None
        # Sharing saves a second copy of the rows; with a row source there is no copy to save,
        # so each layer draws its own sample with its own gradient factor (lower variance).
        share = cfg.share_inputs and self.forward_count is not None and source is None
        key = (k, cfg.effective_method, x._version, self.forward_count[0] if share else None)
        shared = getattr(x, _SAMPLE_ATTR, None) if share else None
        if shared is not None and shared[0] == key:
            plan.mode, plan.source, saved, owner = shared[1], shared[2], shared[3], shared[4]
            if owner is not self and all(t is not self.tracker for t in owner.partners):
                owner.partners.append(self.tracker)
            return saved
        x2 = x.reshape(n, x.shape[-1])
        weights = torch.linalg.vector_norm(x2.float(), dim=1)
        factors = [t.factor(x.shape, x.device) for t in (self.tracker, *self.partners)]
        factors = [f for f in factors if f is not None]
        if factors:
            # the optimal weight for the stacked gradients [dY_q, dY_k, dY_v]: ||x_i|| * ||stacked dY_i||
            weights = weights * torch.sqrt(sum(f * f for f in factors))
        idx, scale = sampling_plan(weights, k, cfg.effective_method, self.generator)
        idx32 = idx.to(torch.int32)
        if source is not None:
            plan.mode, plan.source = "source", source
            saved = (idx32, scale, *source.tensors)
        else:
            kept = (x2.index_select(0, idx).float() * scale.unsqueeze(1)).to(_compute_dtype(x))
            plan.mode = "rows"
            saved = (idx32, kept)
        if share:
            setattr(x, _SAMPLE_ATTR, (key, plan.mode, plan.source, saved, self))
        return saved
