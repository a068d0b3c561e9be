"""Fused Triton kernels: the CUDA implementations of the wtacrs custom ops (issue #14).

A GPU step of a patched model was launch-bound: each op's PyTorch reference is several aten
kernels. On CUDA tensors the ops run these instead (registered with `register_kernel("cuda")`
beside the ops, in `linear_ops.py` and `savers.py`); on the CPU, on fake tensors and wherever
this module says no, they run the reference. Their fake implementations and autograd formulas
are the ops' own, so shapes, what backward saves and the profiler's estimate do not change.

- `sampling.py`: `wtacrs::sample_rows` — row norms x gradient-norm factor (one kernel), the
  plan: normalisation, winner count, winner flags, CDF, inverse-CDF draws, scales, int32
  indices (one single-program kernel), and the scaled gather of the kept rows (one kernel);
  `torch.topk` stays aten.
- `bits.py`: `wtacrs::bit_dropout`, `wtacrs::bit_relu`, `wtacrs::masked_grad` — the mask is
  drawn/computed, applied and packed 8 to a byte in one kernel; backward unpacks and scales in one.
- `weight_grad.py`: the weight gradient on the kept rows in `wtacrs::linear_backward`, one matmul
  that gathers dY rows by index and scales/casts the kept rows as it loads them.
- `dtypes.py`: dtype codes and the fp32 -> bf16/fp16 rounding the kernels share.

The profiler's estimate traces a CUDA device on fake CPU tensors (profiler/instruments/cuda_model.py)
and, inside `modelled_cuda(sm)`, runs these implementations on them as that device would, every
launch skipped (`launch`): what a step allocates on a GPU is what the kernels' Python wrappers
allocate (a Triton kernel allocates nothing of its own), not the reference's intermediates
(dropout's float mask, the plan's dozens of small vectors, the gathered rows of dY).

`WTACRS_TRITON=0` turns them off (read at every call, so one process can compare both). If a
kernel raises (a triton too old to compile it, say), the op warns once, runs its reference and
the kernels stay off for the rest of the process (`failures` says why); `WTACRS_TRITON=strict`
raises instead. This module imports nothing from triton until a kernel is needed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch
from torch._subclasses.fake_tensor import FakeTensor

ENV = "WTACRS_TRITON"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_SM = (8, 0)  # NVIDIA Ampere or newer (bf16 tensor cores): a real device's, or the one modelled
failures: list[str] = []  # "op: error" for each kernel that raised; non-empty turns the kernels off
# the compute capability of the CUDA device fake tensors stand for (modelled_cuda), or None: they
# stand for nothing, and run the reference
_modelled: tuple[int, int] | None = None


@contextlib.contextmanager
def modelled_cuda(sm: tuple[int, int]):
    """Fake tensors stand for tensors of a CUDA device of compute capability `sm`: the ops'
    CUDA implementations run on them, launching nothing (module docstring)."""
    global _modelled
    before, _modelled = _modelled, sm
    try:
        yield
    finally:
        _modelled = before


def launch(kernel, *args, **meta):
    """`kernel(*args, **meta)` (a `jit_function[grid]`), but nothing on fake tensors: a kernel only
    writes into what its wrapper allocated."""
    if any(isinstance(a, FakeTensor) for a in args):
        return None
    return kernel(*args, **meta)


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # not installed, or a build that does not load here
        return False
    return True


@functools.cache
def _device_ok(index: int) -> bool:
    # ROCm builds also dispatch to "cuda", untested here
    return torch.version.hip is None and torch.cuda.get_device_capability(index) >= MIN_SM


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Whether the CUDA implementations run the Triton kernels on these tensors: WTACRS_TRITON is
    not 0, triton imports, and each tensor given is on an NVIDIA GPU (sm80+) in fp32, fp16 or bf16
    (integer and bool tensors: any dtype)."""
    if _off() is not None:
        return False
    for t in tensors:
        if t is None:
            continue
        if isinstance(t, FakeTensor) and _modelled is not None:
            if _modelled < MIN_SM:
                return False
        elif t.device.type != "cuda" or not _device_ok(t.device.index):
            return False
        if t.dtype.is_floating_point and t.dtype not in DTYPES:
            return False
    return True


def _off() -> str | None:
    """Why the kernels are off for every tensor, or None."""
    if os.environ.get(ENV, "1") == "0":
        return f"{ENV}=0"
    if failures:
        return f"a kernel failed: {failures[0]}"
    if not triton_available():
        return "triton does not import"
    return None


def describe() -> str:
    """Which implementation the ops' CUDA kernels are, as a result's environment records it."""
    off = _off()
    if off is None and torch.cuda.is_available() and not _device_ok(torch.cuda.current_device()):
        off = "the kernels need an NVIDIA GPU of sm_80 or newer"
    if off is not None:
        return f"pytorch reference ({off})"
    import triton

    strict = " (strict)" if os.environ.get(ENV) == "strict" else ""
    return f"triton {triton.__version__}{strict}"


def run(op: str, fused, reference):
    """fused(), or, if it raises, reference() after a warning (and no kernels from then on)."""
    try:
        return fused()
    except Exception as e:
        if os.environ.get(ENV) == "strict":
            raise
        failures.append(f"{op}: {e!r}")
        warnings.warn(
            f"wtacrs: the Triton kernel of {op} failed ({e!r}); the ops run their PyTorch reference "
            f"from now on (set {ENV}=0 to skip the kernels, {ENV}=strict to raise)",
            RuntimeWarning,
            stacklevel=3,
        )
        return reference()
