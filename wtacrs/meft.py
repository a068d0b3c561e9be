"""MEFT: make a pre-trained transformer reversible, so backward keeps no per-layer activations.

Liao, Tan, Monz, "Make Pre-trained Model Reversible: From Parameter to Memory Efficient Fine-Tuning"
(NeurIPS 2023, arXiv 2306.00477; reference code BaohaoLiao/mefts). Every layer n becomes a
reversible coupling of two streams (x1, x2), started as x1 = x2 = the embedding output h0:

    y1 = lam * x1 + F(x2)          x1 = (y1 - F(x2)) / lam
    y2 = beta * x2 + G(y1)         x2 = (y2 - G(y1)) / beta

so backward recomputes each layer's input from its output, layer by layer from the top, and re-runs
F and G with grad enabled to get their parameters' gradients (`_ReversibleStack`, one
`torch.autograd.Function` over the whole stack: it saves the two top streams and nothing per layer).

The paper's three variants (F, G, lam, beta, and the order in which the streams leave a layer):

| variant | F | G | lam | beta | out |
|---|---|---|---|---|---|
| meft1 | the pre-trained layer (+ an adapter parallel to its FFN) | an adapter | 0.1 | 1 | (y2, y1) |
| meft2 | an adapter | the pre-trained layer (+ FFN adapter) | 1 | 0.1 | (y2, y1) |
| meft3 | the layer's attention block (+ an adapter on its output) | its FFN block (+ FFN adapter) | 0.1 | 0.1 | (y1, y2) |

The base model is frozen; the adapters (down r, activation, dropout, up) are trained, and the task
head (classifier / score) where the model has one. The top streams are read out as their mean (the
paper's, `readout="mean"`) or as the stream that carries the last layer's output (`"last"`).

The pre-trained starting point. Each adapter's up-projection starts at zero, so every adapter
outputs exactly 0 at initialisation: MEFT1's G and MEFT2's F are then the identity coupling and the
FFN/attention adapters add nothing, and the stream that carries the pre-trained layer outputs holds
h_n + lam*(...) (meft1), h_n + beta*(...) (meft2, meft3): the original layer outputs up to the
scaled skip terms the construction needs to stay invertible (lam, beta > 0). The other stream
carries h_{n-1} (meft1/2) or the attention block's output (meft3); the paper's mean readout
averages it with h_N, relying on adjacent layers' representations being similar.
`tests/wtacrs/test_meft.py` measures the distance to the original model's output for both readouts.

Families: BERT and RoBERTa (post-LN encoders: F/G call the attention and FFN sub-blocks with
their residual and LayerNorm), OPT (pre- or post-LN) and the LLaMA-shaped decoders (LLaMA,
Mistral, Qwen2, Gemma: pre-RMSNorm residual blocks). The coupling needs each layer to be a
function of one hidden state plus inputs that need no gradient (masks, rotary tables): true of all
of these. Not T5 (its first layer computes the relative position bias the others reuse, and the
decoder's cross-attention reads the encoder output, which would have to be an input of the
decoder's reversible stack) nor GPT-2 (its block fits, but no record is written yet).

Exactness: in exact arithmetic the gradients are those of ordinary backprop through the same
reversible model (`set_reversible(model, False)` runs that); in floating point the reconstructed
inputs carry rounding, amplified by 1/lam and 1/beta per layer: the paper's reported limit in fp16
and on deep models. Dropout is replayed exactly (the CPU/CUDA RNG state is recorded before every F
and G in forward and restored for its recomputation, then the global RNG is put back).

No `.item()`, no branch on values: the recomputation traces under FakeTensorMode.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from .meft_blocks import FAMILIES, MEFTAdapter, _dropout, _Family, _hidden_act, _resolve

# variant -> (F, G, lam, beta, swap the streams on the way out)
VARIANTS = {
    "meft1": ("layer", "adapter", 0.1, 1.0, True),
    "meft2": ("adapter", "layer", 1.0, 0.1, True),
    "meft3": ("attn", "mlp", 0.1, 0.1, False),
}
READOUTS = ("mean", "last")


@dataclass(frozen=True)
class MEFTConfig:
    """variant meft1|meft2|meft3; r: adapter bottleneck; lam/beta: the scaling factors of the two
    streams (None: the variant's defaults); readout: 'mean' (paper) or 'last'; freeze: freeze the
    pre-trained weights (the task head stays trainable)."""

    variant: str = "meft1"
    r: int = 8
    lam: float | None = None
    beta: float | None = None
    readout: str = "mean"
    freeze: bool = True

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"MEFT variant {self.variant!r} is unknown; allowed: {sorted(VARIANTS)}")
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"MEFT adapter size r={self.r!r} must be an integer >= 1")
        for name in ("lam", "beta"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"MEFT {name}={value!r} must be a finite number > 0 (the coupling divides by it)")
        if self.readout not in READOUTS:
            raise ValueError(f"MEFT readout {self.readout!r} is unknown; allowed: {list(READOUTS)}")

    @property
    def factors(self) -> tuple[float, float]:
        _, _, lam, beta, _ = VARIANTS[self.variant]
        return (lam if self.lam is None else float(self.lam), beta if self.beta is None else float(self.beta))


@contextlib.contextmanager
def _rng_replay(state):
    """Run with the global RNG set to `state` (cpu, cuda-or-None), then put the global RNG back."""
    cpu, cuda = state
    devices = [cuda[0]] if cuda is not None else []
    with torch.random.fork_rng(devices=devices, enabled=True):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda[1], cuda[0])
        yield


def _rng_state(x: torch.Tensor):
    cuda = None
    if x.device.type == "cuda":
        idx = x.device.index if x.device.index is not None else torch.cuda.current_device()
        cuda = (idx, torch.cuda.get_rng_state(idx))
    return torch.get_rng_state(), cuda


class _Block:
    """One reversible layer: its F and G (closures over the layer and the loop's inputs)."""

    def __init__(self, stack: MEFTStack, layer: nn.Module):
        self.stack, self.layer = stack, layer
        fam, variant = stack.family, stack.config.variant
        ffn = getattr(layer, "meft_ffn_adapter", None)
        if variant == "meft3":
            attn = getattr(layer, "meft_attn_adapter", None)
            self.f = lambda x, kw: fam.attn(layer, x, kw, attn)
            self.g = lambda x, kw: fam.mlp(layer, x, kw, ffn)
            self.f_modules, self.g_modules = self._split(layer, attn_side=True), self._split(layer, attn_side=False)
        else:
            rev = layer.meft_rev_adapter

            def whole(x, kw):
                return fam.mlp(layer, fam.attn(layer, x, kw, None), kw, ffn)

            def adapter(x, kw):
                return rev(x)

            whole_params = [p for n, p in layer.named_parameters() if not n.startswith("meft_rev_adapter.")]
            if variant == "meft1":
                self.f, self.g, self.f_modules, self.g_modules = whole, adapter, whole_params, list(rev.parameters())
            else:
                self.f, self.g, self.f_modules, self.g_modules = adapter, whole, list(rev.parameters()), whole_params
        self.f_params = [p for p in self.f_modules if p.requires_grad]
        self.g_params = [p for p in self.g_modules if p.requires_grad]

    @staticmethod
    def _split(layer, attn_side: bool):
        """meft3: the parameters of the attention side (F) or the FFN side (G) of a layer."""
        attn_names = ("attention.", "self_attn.", "input_layernorm.", "self_attn_layer_norm.", "meft_attn_adapter.")
        return [p for n, p in layer.named_parameters() if n.startswith(attn_names) == attn_side]


class _ReversibleStack(torch.autograd.Function):
    """Forward under no_grad through every block; saves only the two top streams; backward
    reconstructs each block's inputs from its outputs and backpropagates through its recomputation."""

    @staticmethod
    def forward(ctx, stack, kw, x, *params):
        lam, beta = stack.config.factors
        swap = VARIANTS[stack.config.variant][4]
        blocks = stack.blocks()
        device_type = x.device.type
        ctx.autocast = (
            device_type,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        states = []
        x1 = x2 = x
        with torch.no_grad():
            for block in blocks:
                sf = _rng_state(x)
                y1 = lam * x1 + block.f(x2, kw)
                sg = _rng_state(x)
                y2 = beta * x2 + block.g(y1, kw)
                states.append((sf, sg))
                x1, x2 = (y2, y1) if swap else (y1, y2)
        ctx.stack, ctx.kw, ctx.blocks, ctx.states, ctx.n_params = stack, kw, blocks, states, len(params)
        ctx.param_index = {id(p): i for i, p in enumerate(params)}
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx, do1, do2):
        o1, o2 = ctx.saved_tensors
        lam, beta = ctx.stack.config.factors
        swap = VARIANTS[ctx.stack.config.variant][4]
        device_type, autocast_on, autocast_dtype = ctx.autocast
        grads: list[torch.Tensor | None] = [None] * ctx.n_params
        do1 = torch.zeros_like(o1) if do1 is None else do1
        do2 = torch.zeros_like(o2) if do2 is None else do2

        def run(fn, inp, state, params, grad_out):
            """fn(inp) recomputed with grad under the forward's RNG and autocast; its value and the
            gradients of grad_out through it for inp and params (accumulated into `grads`)."""
            with _rng_replay(state), torch.enable_grad():
                with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_on):
                    leaf = inp.detach().requires_grad_(True)
                    out = fn(leaf, ctx.kw)
                got = torch.autograd.grad(out, [leaf, *params], grad_out, allow_unused=True)
            for p, g in zip(params, got[1:]):
                if g is not None:
                    i = ctx.param_index[id(p)]
                    grads[i] = g if grads[i] is None else grads[i] + g
            return out.detach(), got[0]

        for block, (sf, sg) in zip(reversed(ctx.blocks), reversed(ctx.states)):
            (y2, y1), (dy2, dy1) = ((o1, o2), (do1, do2)) if swap else ((o2, o1), (do2, do1))
            g, dg = run(block.g, y1, sg, block.g_params, dy2)
            with torch.no_grad():
                x2 = (y2 - g) / beta
                del g
                dy1 = dy1 + dg if dg is not None else dy1
            f, df = run(block.f, x2, sf, block.f_params, dy1)
            with torch.no_grad():
                x1 = (y1 - f) / lam
                del f
                dx1 = lam * dy1
                dx2 = beta * dy2 + df if df is not None else beta * dy2
            o1, o2, do1, do2 = x1, x2, dx1, dx2
        dx = (do1 + do2) if ctx.needs_input_grad[2] else None
        return (None, None, dx, *grads)


class _StackRunner:
    """What the model's layer loop gets in place of its layers: one call that runs them all."""

    def __init__(self, stack: MEFTStack):
        self.stack = stack
        first = stack.layers_list[0]
        if hasattr(first, "attention_type"):  # Qwen2-style loops pick the mask by layer type
            self.attention_type = first.attention_type

    def __call__(self, hidden_states, *args, **kwargs):
        return self.stack.run(hidden_states, args, kwargs)


class _ReversibleLayers(nn.ModuleList):
    """The layers' ModuleList (same children, same parameter names) whose iteration (and slicing)
    hands the model's loop one runner for the whole reversible stack. Indexing by int still gives
    a layer; `len` is the number of layers."""

    def __iter__(self):
        return iter([self._meft_runner])

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return [self._meft_runner]
        return super().__getitem__(idx)


class MEFTStack:
    """The reversible stack of one model: its config, family blocks and the runner."""

    def __init__(self, layers: _ReversibleLayers, family: _Family, config: MEFTConfig):
        self.layers_list = list(layers._modules.values())
        self.family, self.config = family, config
        self.reversible = True

    def blocks(self) -> list[_Block]:
        return [_Block(self, layer) for layer in self.layers_list]

    def params(self) -> list[nn.Parameter]:
        seen, out = set(), []
        for layer in self.layers_list:
            for p in layer.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def run(self, hidden_states, args, kwargs):
        fam = self.family
        kw = dict(zip(fam.positional, args))
        kw.update(kwargs)
        extra = {k: v for k, v in kw.items() if k not in fam.drop and k != "attention_mask"}
        if kw.get("encoder_hidden_states") is not None:
            raise NotImplementedError("MEFT: cross-attention (encoder_hidden_states) is not supported")
        ctx = {"attention_mask": kw.get("attention_mask"), "extra": extra}
        params = self.params()
        lam, beta = self.config.factors
        swap = VARIANTS[self.config.variant][4]
        train = torch.is_grad_enabled() and (hidden_states.requires_grad or bool(params))
        if self.reversible and train:
            x1, x2 = _ReversibleStack.apply(self, ctx, hidden_states, *params)
        else:  # ordinary autograd through the same model (the exact reference), or inference
            x1 = x2 = hidden_states
            for block in self.blocks():
                y1 = lam * x1 + block.f(x2, ctx)
                y2 = beta * x2 + block.g(y1, ctx)
                x1, x2 = (y2, y1) if swap else (y1, y2)
        if self.config.readout == "mean":
            return (x1 + x2) * 0.5
        return x1 if self.config.variant == "meft2" else x2  # the stream that carries the layer output


def _find(model: nn.Module, model_type: str):
    if model_type not in FAMILIES:
        raise ValueError(
            f"MEFT supports the families {sorted(FAMILIES)}; not {model_type!r} "
            "(T5: the first layer's position bias and the decoder's cross-attention inputs break the coupling)"
        )
    fam = FAMILIES[model_type]
    for path in fam.stack:
        parent = _resolve(model, path)
        if parent is not None and isinstance(getattr(parent, fam.layers, None), nn.ModuleList):
            return fam, parent
    raise ValueError(f"MEFT: no layer stack found in {type(model).__name__} (looked at {list(fam.stack)})")


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "base_model"):
        config = model.base_model.model.config
    return config.model_type, config


def apply_meft(model: nn.Module, config: MEFTConfig | None = None) -> nn.Module:
    """Make `model` (a transformers BERT/RoBERTa/OPT/LLaMA-family model) reversible in place:
    adapters are added to every layer, the base is frozen (config.freeze), the layer loop runs the
    reversible stack. Returns the model."""
    config = config or MEFTConfig()
    model_type, mconfig = _model_type(model)
    fam, parent = _find(model, model_type)
    layers = getattr(parent, fam.layers)
    if isinstance(layers, _ReversibleLayers):
        raise ValueError("MEFT is already applied to this model")
    hidden = mconfig.hidden_size
    act, p = _hidden_act(mconfig), _dropout(mconfig)
    ref = next(layers[0].parameters())
    if config.freeze:
        for q in model.parameters():
            q.requires_grad_(False)
    for layer in layers:
        second = "meft_attn_adapter" if config.variant == "meft3" else "meft_rev_adapter"
        for name in ("meft_ffn_adapter", second):
            layer.add_module(name, MEFTAdapter(hidden, config.r, act, p, device=ref.device, dtype=ref.dtype))
    if config.freeze:
        for name in fam.heads:
            head = _resolve(model, name)
            if isinstance(head, nn.Module):
                for q in head.parameters():
                    q.requires_grad_(True)
    wrapped = _ReversibleLayers(list(layers._modules.values()))
    stack = MEFTStack(wrapped, fam, config)
    object.__setattr__(wrapped, "_meft_runner", _StackRunner(stack))
    object.__setattr__(wrapped, "meft_stack", stack)
    setattr(parent, fam.layers, wrapped)
    return model


def meft_stack(model: nn.Module) -> MEFTStack | None:
    """The model's reversible stack, or None when MEFT is not applied."""
    for module in model.modules():
        if isinstance(module, _ReversibleLayers):
            return module.meft_stack
    return None


def set_reversible(model: nn.Module, reversible: bool) -> None:
    """True (default): reversible backward. False: ordinary backprop through the same model, which
    keeps every layer's activations: the exact reference the reversible gradients are checked against."""
    stack = meft_stack(model)
    if stack is None:
        raise ValueError("MEFT is not applied to this model")
    stack.reversible = reversible


def meft_adapter_names(model: nn.Module) -> list[str]:
    """Names of the trainable adapter parameters (what fidelity compares)."""
    return [n for n, p in model.named_parameters() if ".meft_" in n and p.requires_grad]
