"""What a result was measured on: recorded with every job."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def describe(mode: str) -> dict:
    """The host and the versions (the runner adds the optimizer a job's spec resolves to)."""
    import torch
    import transformers

    # the installed version, not `import peft`: importing it pulls in transformers' generation
    # code and scikit-learn, 4 s of every job that runs no LoRA
    try:
        peft_version = importlib.metadata.version("peft")
    except importlib.metadata.PackageNotFoundError:
        peft_version = None
    env = {
        "mode": mode,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "peft_version": peft_version,
        "git_revision": git_revision(),
        "allocator_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF"),
        "torch_threads": torch.get_num_threads(),
    }
    if mode == "cuda" and torch.cuda.is_available():
        from wtacrs import kernels

        props = torch.cuda.get_device_properties(0)
        env.update(
            wtacrs_kernels=kernels.describe(),
            device_name=props.name,
            device_total_bytes=props.total_memory,
            cuda_version=torch.version.cuda,
            driver=_nvidia_driver(),
        )
    else:
        env.update(
            wtacrs_kernels=_traced_kernels()
            if mode == "estimate"
            else "pytorch reference (the Triton kernels are CUDA-only)",
            device_name=f"cpu ({platform.processor() or platform.machine()})",
            device_total_bytes=_host_memory(),
        )
    return env


def _traced_kernels() -> str:
    """What an estimate traces the wtacrs ops as (a CUDA device's estimate; a CPU's traces the reference)."""
    from wtacrs import kernels

    running = kernels.describe()  # "triton X.Y", or "pytorch reference (why)"
    if not running.startswith("triton"):
        return running
    return f"{running} kernels' allocations, launches skipped (a CUDA device's estimate; a CPU's: the reference)"


def process_device_bytes() -> int | None:
    """Device memory of this process as the driver sees it (CUDA context and workspaces included)."""
    import torch

    try:
        return int(torch.cuda.device_memory_used())
    except Exception:  # needs NVML (pynvml); absent on many hosts
        return None


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _host_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None
