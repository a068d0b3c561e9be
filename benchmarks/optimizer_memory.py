"""Peak memory per optimizer implementation: the profiler's estimate next to torch's MemTracker.

For each case (model, method, batch) and each optimizer, one trace under FakeTensorMode with the
CUDA sm90 device model (`estimate` mode): the profiler's own peak (`measure_memory`, the storage
tracker plus the cuBLAS workspaces) and, counted in the same trace by an independent tracker,
`torch.distributed._tools.mem_tracker.MemTracker`'s peak. The fake tensors stand for CUDA ones, so
MemTracker is told to round storages as it does on CUDA (512-byte blocks); it knows nothing of
cuBLAS workspaces, so it is compared with the profiler's peak less workspace_bytes (tracked_peak_bytes).

Usage: python benchmarks/optimizer_memory.py [--case t5-large:full:1 ...] [--optimizers adamw-single adamw ...]
Cases are model:method:batch; the default is T5-Large full fine-tuning at batch 1, length 128, fp32.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.distributed._tools import mem_tracker  # noqa: E402

from contract.methods import parse_method  # noqa: E402
from contract.spec import JobSpec  # noqa: E402
from profiler.instruments.cuda_model import SM90  # noqa: E402
from profiler.trial.build import build_trial, free_cached, release  # noqa: E402
from profiler.trial.measure import measure_memory  # noqa: E402

OPTIMIZERS = ("adamw-single", "adamw-foreach", "adamw-fused", "sgd")


def _round_as_cuda(self) -> int:
    """MemTracker's rule for a CUDA storage, applied to the fake CPU storages that stand for them."""
    mem = self.size * self.element_size
    return -(-mem // mem_tracker._PYTORCH_MIN_ALLOCATE) * mem_tracker._PYTORCH_MIN_ALLOCATE


class _NoHook:
    def remove(self) -> None:
        pass


def run_case(model: str, method: str, batch: int, optimizer: str, seq_len: int, dtype: str) -> dict:
    spec = JobSpec.model_validate(
        {
            "model": model,
            "methods": [method],
            "seq_len": seq_len,
            "batch_sizes": [batch],
            "dtype": dtype,
            "measurements": ["peak_memory"],
            "device": "estimate",
            "estimate_device": SM90.name,
            "optimizer": optimizer,
        }
    )
    t0 = time.perf_counter()
    trial = None
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as fake:
            trial = build_trial(spec, parse_method(method), batch, torch.device("cpu"), fake, SM90)
            tracker = mem_tracker.MemTracker()
            for p in trial.model.parameters():  # MemTracker hooks every parameter's gradient; frozen ones have none
                if not p.requires_grad:
                    tracker._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
            tracker.track_external(trial.model, trial.optimizer)
            step = trial.forward_backward

            def forward_backward(saved=None):
                tracker.reset_mod_stats()  # MemTracker keeps per-module stats of one iteration only
                step(saved)

            trial.forward_backward = forward_backward
            with tracker:
                ours = measure_memory(trial, "estimate")
            theirs = max(snap[mem_tracker._TOTAL_KEY] for snap in tracker.get_tracker_snapshot("peak").values())
    finally:
        release(trial)
        del trial
        free_cached()
    return {
        "model": model,
        "method": method,
        "batch_size": batch,
        "seq_len": seq_len,
        "dtype": dtype,
        "optimizer": optimizer,
        "optimizer_impl": ours["optimizer_impl"],
        "peak_bytes": ours["peak_bytes"],
        "first_step_peak_bytes": ours["first_step_peak_bytes"],
        "tracked_peak_bytes": ours["tracked_peak_bytes"],
        "workspace_bytes": ours["workspace_bytes"],
        "memtracker_peak_bytes": int(theirs),
        "breakdown": ours["breakdown"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", help="model:method:batch (repeatable)")
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--jsonl", help="append each result as a JSON line to this file")
    args = ap.parse_args()
    cases = args.case or ["t5-large:full:1"]
    mem_tracker._WeakRefInfo._calculate_mem_consumed = _round_as_cuda
    print(
        f"# {platform.node()} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}, {datetime.date.today()}"
    )
    header = (
        f"{'case':<26} {'optimizer':<14} {'impl':<8} {'estimate peak':>16} {'tracked':>16} "
        f"{'MemTracker':>16} {'diff':>9} {'opt. state':>15} {'s':>6}"
    )
    print(header)
    for case in cases:
        model, method, batch = case.split(":")
        for optimizer in args.optimizers:
            r = run_case(model, method, int(batch), optimizer, args.seq, args.dtype)
            diff = r["memtracker_peak_bytes"] / r["tracked_peak_bytes"] - 1
            print(
                f"{case:<26} {optimizer:<14} {r['optimizer_impl']:<8} {r['peak_bytes']:>16,} "
                f"{r['tracked_peak_bytes']:>16,} {r['memtracker_peak_bytes']:>16,} {diff:>+9.4%} "
                f"{r['breakdown']['optimizer_state']:>15,} {r['seconds']:>6}",
                flush=True,
            )
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
