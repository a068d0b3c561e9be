"""Building a trial: a fresh seeded model with the method applied, its optimizer and a batch, on a
device or as fake tensors under FakeTensorMode (the estimate); and letting it go again.

Measuring a built trial is `trial/measure.py`; doing both in one of the three modes is `trial/mode.py`.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from dataclasses import dataclass

import torch

from contract.methods import Method
from contract.spec import JobSpec
from wtacrs.memory import SavedTensorCounter

from ..instruments.cuda_model import DeviceModel, cuda_kernels
from .methods import apply_method
from .zoo import build_model, make_batch

_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device_type: str, dtype: str):
    """The spec's dtype as a context: fp32 runs as is, bf16/fp16 under autocast (fp32 weights);
    bf16-weights runs as is too, its weights being bf16 already (build_trial)."""
    if dtype in ("fp32", "bf16-weights"):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=_AMP[dtype])


@dataclass
class Trial:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batch: dict
    device: torch.device
    dtype: str
    kernels: DeviceModel | None = None  # estimate: trace the kernels this CUDA device would run
    traced: bool = False  # under FakeTensorMode: no tensor has a value
    compiled: torch.nn.Module | None = None  # torch.compile(model), what a step runs (compile_step)
    optimizer_name: str = "adamw"  # the spec's optimizer
    optimizer_impl: str = "single"  # what it ran as: single, foreach or fused (optimizer_impl)

    def autocast(self):
        return autocast(self.device.type, self.dtype)

    def forward_backward(self, saved: SavedTensorCounter | None = None) -> None:
        """One forward and backward; `saved` counts what the forward keeps for backward."""
        # backward too: checkpointing recomputes its forward there
        kernels = cuda_kernels(self.kernels) if self.kernels else contextlib.nullcontext()
        step_model = self.model if self.compiled is None else self.compiled
        with kernels, real_random_scalars() if self.traced else contextlib.nullcontext():
            with saved.track() if saved is not None else contextlib.nullcontext(), self.autocast():
                loss = step_model(**self.batch).loss
            loss.backward()

    def optimizer_step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def optimizer_impl(spec: JobSpec) -> str:
    """The implementation spec.optimizer runs as: 'single', 'foreach' or 'fused'.

    A pinned one (adamw-foreach, adamw-fused, adamw-single) is what it says. Otherwise it is torch's
    default for the device (`torch.optim.optimizer._default_to_fused_or_foreach`, never fused unless
    asked): foreach where every parameter is on a device with foreach kernels (CUDA), single-tensor
    on the CPU. An estimate of a CUDA device (estimate_device cuda-sm90) traces fake CPU tensors that
    stand for CUDA ones, so it is resolved here, as CUDA would, and passed to the optimizer
    explicitly; an estimate of the CPU gets the CPU's choice.
    """
    if spec.optimizer.startswith("adamw-"):
        return spec.optimizer.removeprefix("adamw-")
    cuda = spec.device == "cuda" or (spec.device == "estimate" and spec.estimate_device != "cpu")
    return "foreach" if cuda else "single"


def make_optimizer(spec: JobSpec, model) -> torch.optim.Optimizer:
    """spec.optimizer over the model's trainable parameters, its implementation resolved and explicit
    (optimizer_impl), so a row can say which one ran."""
    params = [p for p in model.parameters() if p.requires_grad]
    impl = optimizer_impl(spec)
    kind = {"foreach": True, "fused": False, "single": False}
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=0.9, foreach=kind[impl])
    if spec.optimizer == "adafactor":
        return torch.optim.Adafactor(params, lr=spec.lr, foreach=kind[impl])
    cls = torch.optim.Adam if spec.optimizer == "adam" else torch.optim.AdamW
    if impl == "fused":
        return cls(params, lr=spec.lr, fused=True)
    return cls(params, lr=spec.lr, foreach=kind[impl])


def _swap_tensors(model: torch.nn.Module, convert) -> None:
    """Replace every parameter and buffer by convert(tensor), in place: one new object per old one
    (shared Parameters stay shared), and plain attributes naming a replaced tensor follow it."""
    done: dict[int, torch.Tensor] = {}

    def swap(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in done:
            new = convert(t.detach())
            done[id(t)] = torch.nn.Parameter(new, t.requires_grad) if isinstance(t, torch.nn.Parameter) else new
        return done[id(t)]

    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is not None:
                    table[name] = swap(t)
        for name, value in vars(module).items():  # Parameters also referenced as plain attributes
            if isinstance(value, torch.Tensor) and id(value) in done:
                setattr(module, name, done[id(value)])


def _to_fake(model: torch.nn.Module, fake_mode, device: torch.device) -> None:
    """A meta-device model's parameters and buffers as fake tensors on `device`, in place."""
    converter = fake_mode.fake_tensor_converter
    _swap_tensors(model, lambda t: converter.from_meta_and_device(fake_mode, t, device))


def _meta_to_bf16(model: torch.nn.Module) -> None:
    """module.to(torch.bfloat16) for a model built on meta under FakeTensorMode, in place.

    Its tensors are fake ones on meta there, which module._apply can only swap in, and the swap
    fails (the fake mode holds weak references to them); so each floating tensor is replaced.
    """
    _swap_tensors(model, lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t)


def build_trial(
    spec: JobSpec,
    method: Method,
    batch_size: int,
    device: torch.device,
    fake_mode=None,
    kernels: DeviceModel | None = None,
) -> Trial:
    """A fresh seeded model with the method applied, its optimizer and a batch.

    With fake_mode the model is built on the meta device (no memory, and module.to() works there,
    which it does not on fake parameters) and then turned into fake tensors on `device`; `kernels`
    then says which CUDA device's kernel choices the trace follows (None: the CPU's).
    dtype bf16-weights stores every floating parameter and buffer in bf16 (the method's too, LoRA
    adapters included), before the optimizer exists, so its state is bf16 as well.
    """
    low = spec.dtype == "bf16-weights"
    default = torch.get_default_dtype()
    with torch.device("meta" if fake_mode is not None else device):
        # built in bf16 (as from_pretrained(dtype=bf16) loads), not cast from an fp32 copy that a
        # cpu measurement would count; .to() then casts what chose its own dtype (peft's adapters)
        torch.set_default_dtype(torch.bfloat16 if low else default)
        try:
            family, model = build_model(spec)
            model = apply_method(model, family, method, spec.lora_r)
        finally:
            torch.set_default_dtype(default)
        if low:
            if fake_mode is None:
                model = model.to(torch.bfloat16)
            else:
                _meta_to_bf16(model)
    if fake_mode is not None:
        _to_fake(model, fake_mode, device)
    config = getattr(model, "config", None) or model.base_model.model.config
    batch = make_batch(family, config, batch_size, spec.seq_len, device, seed=spec.seed)
    if fake_mode is not None:
        # The batch's mask is all ones. On real tensors transformers sees that and drops it (SDPA
        # then runs maskless, and on CUDA fused); fake tensors have no values to look at, so it
        # would keep a mask that no real run keeps. Dropping it here is what a real run does.
        batch.pop("attention_mask", None)
    return Trial(
        model,
        make_optimizer(spec, model),
        batch,
        device,
        spec.dtype,
        kernels,
        fake_mode is not None,
        optimizer_name=spec.optimizer,
        optimizer_impl=optimizer_impl(spec),
    )


@contextlib.contextmanager
def real_random_scalars():
    """`torch.rand([])` with a value while tracing: LayerDrop (OPT, BART) draws one per layer and
    branches on it in Python, which a fake tensor cannot answer. A scalar made by `torch.tensor`
    is a fake tensor that keeps its value, so it can. The draw decides nothing about memory when
    layerdrop is 0 (their default), and is one real draw when it is not."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    rand = torch.rand

    def drawn(*size, **kwargs):
        if size in ((), ([],), ((),)) and not kwargs:
            with unset_fake_temporarily():
                value = rand(()).item()
            return torch.tensor(value)
        return rand(*size, **kwargs)

    torch.rand = drawn
    try:
        yield
    finally:
        torch.rand = rand


def release(trial: Trial | None) -> None:
    """Drop what a trial holds beyond its model (gradients, optimizer state, its compiled step)."""
    if trial is not None:
        trial.model.zero_grad(set_to_none=True)
        trial.optimizer.state.clear()
        trial.compiled = None


def free_cached(drop_compiled: bool = True) -> None:
    """Collect what is unreachable and hand the CUDA allocator's cached blocks back, so the next
    trial's peaks (reserved ones included) start from what is really alive. Call it where no
    exception is being handled: a traceback keeps its frames', and so a failed step's, tensors.
    Compiled graphs go too (Dynamo's caches hold the compiled model, its guards and constants), so
    one method's or batch size's graphs neither keep memory nor serve another's step; a caller
    still stepping compiled models (benchmarks/step_time.py) keeps them with drop_compiled=False."""
    if drop_compiled and "torch._dynamo" in sys.modules:  # only where something may have been compiled
        torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
