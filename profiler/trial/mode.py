"""A trial in one of the three modes: `cpu` under the CPU allocator's record, `cuda` as is, and
`estimate` as fake tensors under FakeTensorMode (with the CUDA kernel choices of the estimated
device). `trial_in_mode` is the one place that sets a mode up, builds the trial in it, and lets
the trial and what it cached go again, whatever happened in between."""

from __future__ import annotations

import contextlib
import traceback

import torch

from contract.methods import Method
from contract.spec import JobSpec

from ..instruments.cpu_allocator import CPUAllocatorRecord
from ..instruments.cuda_model import SM90
from .build import Trial, build_trial, free_cached, release


def device_for(spec: JobSpec) -> torch.device:
    """Where a spec's tensors live: cuda (checked to exist, with bf16 where the dtype needs it) or
    the CPU (cpu, and estimate, whose fake tensors stand for a device's on the CPU)."""
    if spec.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device on this host")
        if spec.dtype in ("bf16", "bf16-weights") and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(0)
            raise RuntimeError(
                f"dtype {spec.dtype!r} needs a GPU with bf16 (Ampere or newer); {name} has none: use fp16 or fp32"
            )
        return torch.device("cuda")
    return torch.device("cpu")


def mode_context(spec: JobSpec, record: bool = True):
    """The context a trial of the spec's mode runs in; `record=False` leaves the CPU allocator's
    record out (for a run that reads no allocator peak: it only slows the steps)."""
    if spec.device == "cpu":
        return CPUAllocatorRecord() if record else contextlib.nullcontext()
    if spec.device == "cuda":
        return contextlib.nullcontext()
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


class trial_in_mode:  # noqa: N801 (used as a context manager, like contextlib's)
    """`with trial_in_mode(spec, method, batch_size) as run:` builds `run.trial` inside the spec's
    mode context `run.mode` (a CPUAllocatorRecord on cpu), which stays open for the block until
    `run.leave_mode()`; `run.outer` is what `outer` (a context entered first) gave.

    At the end, on success or failure, the trial is released and dropped and cached memory freed.
    An exception still propagates, but first the locals of the frames it passed through are
    cleared: they hold the failed step's tensors, and freeing while they lived would leave their
    blocks cached, so every later probe of a max-batch search would fail for memory a dead trial
    holds. So read the trial through `run.trial` and keep no other reference to it in the block.
    """

    def __init__(
        self,
        spec: JobSpec,
        method: Method,
        batch_size: int,
        *,
        record: bool = True,
        outer: contextlib.AbstractContextManager | None = None,
        device: torch.device | None = None,
    ):
        self.spec, self.method, self.batch_size = spec, method, batch_size
        self._record, self._outer, self._device = record, outer, device
        self.trial: Trial | None = None
        self.mode = self.outer = None
        self._stack = contextlib.ExitStack()

    @property
    def kernels(self):
        """The CUDA device an estimate traces the kernels of (None: the CPU's, or not an estimate)."""
        spec = self.spec
        return SM90 if spec.device == "estimate" and spec.estimate_device == SM90.name else None

    def __enter__(self) -> trial_in_mode:
        try:
            if self._outer is not None:
                self.outer = self._stack.enter_context(self._outer)
            self.mode = self._stack.enter_context(mode_context(self.spec, self._record))
            fake = self.mode if self.spec.device == "estimate" else None
            device = self._device or device_for(self.spec)
            self.trial = build_trial(self.spec, self.method, self.batch_size, device, fake, self.kernels)
        except BaseException as err:
            self.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def leave_mode(self):
        """Close the mode context now (a CPU record's peaks can be read once it is closed); returns it."""
        self._stack.close()
        return self.mode

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._stack.__exit__(exc_type, exc, tb)
        finally:
            for _ in range(8):  # the exception and those it was raised while handling
                if tb is not None:
                    traceback.clear_frames(tb)
                exc = exc.__context__ if exc is not None else None
                if exc is None:
                    break
                tb = exc.__traceback__
            release(self.trial)
            self.trial = None
            free_cached()
        return False
