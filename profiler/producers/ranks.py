"""Measured DDP/FSDP trials (`cpu` with gloo, `cuda` with NCCL): one process per rank, each building
the same seeded model, wrapping it as `sharding.wrap` does and measuring its own peak the way the
one-device path does (a CPUAllocatorRecord spanning the trial on cpu, CUDA's statistics on cuda)
and its step time. Ranks report through a file each; `merge_ranks` makes one row of them."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from contract.methods import Method, parse_method
from contract.rows import TrialRow
from contract.spec import JobSpec

from ..instruments.cpu_allocator import FIRST_STEP, STEADY, CPUAllocatorRecord
from ..trial.measure import measure_throughput, reconcile
from ..trial.mode import trial_in_mode
from .base import base_row
from .outcome import failure
from .processes import die_with_parent
from .sharding import RankTracker, distributed, sharded_trial


def measured_rows(spec: JobSpec, methods: list[Method], batch_size: int, throughput: bool = True) -> list[TrialRow]:
    """cpu/cuda: one row per method, from one launch of the ranks (each runs the methods in turn)."""
    rows = [base_row(spec, m, batch_size) for m in methods]
    try:
        per_method = launch(spec, methods, batch_size, throughput)
    except Exception as err:
        per_method = [[failure(err)]] * len(methods)
    for row, reports in zip(rows, per_method):
        row.update(merge_ranks(reports, spec, batch_size))
    return [TrialRow.model_validate(row) for row in rows]


def merge_ranks(reports: list[dict], spec: JobSpec, batch_size: int) -> dict:
    """One row from the ranks' reports of a trial: an OOM or error of any rank is the row's; memory
    and step time are the max over ranks, tokens/s is of all ranks together."""
    for r in reports:
        where = f"rank {r['rank']}: " if "rank" in r else ""
        if r.get("oom"):
            return {"oom": True, "oom_message": where + str(r.get("oom_message"))}
        if r.get("error"):
            return {"error": where + r["error"]}
    worst = max(reports, key=lambda r: r["peak_bytes"])
    out = {k: v for k, v in worst.items() if k != "rank" and not k.startswith("step_time")}
    out["peak_bytes"] = max(r["peak_bytes"] for r in reports)
    out["first_step_peak_bytes"] = max(r["first_step_peak_bytes"] for r in reports)
    out["peak_spread_bytes"] = out["peak_bytes"] - min(r["peak_bytes"] for r in reports)
    keys = ("rank", "peak_bytes", "first_step_peak_bytes", "step_time_s")
    out["ranks"] = [{k: r.get(k) for k in keys} for r in reports]
    if all(r.get("step_time_s") is not None for r in reports):
        step = max(r["step_time_s"] for r in reports)  # a step ends when its slowest rank's does
        samples = spec.parallel.world_size * batch_size
        out.update(
            step_time_s=step,
            step_time_min_s=min(r["step_time_min_s"] for r in reports),
            step_time_max_s=max(r["step_time_max_s"] for r in reports),
            tokens_per_s=samples * spec.seq_len / step,
            samples_per_s=samples / step,
        )
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(spec: JobSpec, methods: list[Method], batch_size: int, throughput: bool) -> list[list[dict]]:
    """Run every rank as a process (`python -m profiler.producers.ranks`), each measuring the methods in
    turn; per method, the ranks' reports. A rank that fails stops (the others would wait in a
    collective forever), so they are stopped too, and the methods after it are not run."""
    n = spec.parallel.world_size
    if spec.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device on this host")
        if torch.cuda.device_count() < n:
            raise RuntimeError(f"world_size {n} needs {n} GPUs; this worker sees {torch.cuda.device_count()}")
    root = str(Path(__file__).resolve().parents[2])
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    task = {"spec": spec.model_dump_json(), "methods": [m.name for m in methods], "batch_size": batch_size}
    task |= {"throughput": throughput, "port": _free_port()}
    reports: dict[int, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="wtacrs-ranks-") as tmp:
        Path(tmp, "task.json").write_text(json.dumps(task))
        procs = []
        for rank in range(n):
            with open(Path(tmp, f"{rank}.err"), "wb") as err:
                cmd = [sys.executable, "-m", "profiler.producers.ranks", tmp, str(rank)]
                procs.append(subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=err))
        deadline = time.monotonic() + spec.timeout_s
        try:
            while len(reports) < n:
                for rank, proc in enumerate(procs):
                    if rank not in reports and proc.poll() is not None:
                        reports[rank] = _read_report(Path(tmp), rank, proc.returncode)
                if any(len(trials) < len(methods) or _failed(trials[-1]) for trials in reports.values()):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the ranks did not finish within {spec.timeout_s:g} s (timeout_s)")
                time.sleep(0.1)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
    out = []
    for i in range(len(methods)):
        done = [trials[i] for trials in reports.values() if len(trials) > i]
        failed = [r for r in done if _failed(r)]
        if failed or len(done) == n:
            out.append(failed[:1] or sorted(done, key=lambda r: r["rank"]))
        else:
            out.append([{"error": "not run: a rank stopped at an earlier method"}])
    return out


def _failed(report: dict) -> bool:
    return bool(report.get("oom") or report.get("error"))


def _read_report(folder: Path, rank: int, code: int) -> list[dict]:
    out = folder / f"{rank}.json"
    if out.exists():
        return json.loads(out.read_text())
    if code == -9:  # not by us (we stop ranks only after reading every report we wait for)
        return [
            {"rank": rank, "oom": True, "oom_message": "killed by SIGKILL, often the kernel's out-of-memory killer"}
        ]
    tail = (folder / f"{rank}.err").read_text(errors="replace")[-600:]
    return [{"rank": rank, "error": f"the rank's process exited with code {code}: {tail}"}]


def run_rank(spec: JobSpec, methods: list[Method], batch_size: int, rank: int, port: int, throughput: bool):
    """This process as one rank: in its process group, for each method build, wrap and measure.
    Yields a report per method and stops at the first that fails."""
    dist, init_device_mesh, *_ = distributed()
    n = spec.parallel.world_size
    cuda = spec.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    timeout = datetime.timedelta(seconds=spec.timeout_s)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=n, timeout=timeout)
    try:
        mesh = init_device_mesh(device.type, (n,))
        for method in methods:
            report = {"rank": rank}
            try:
                report |= _measure_rank(spec, method, batch_size, device, mesh, throughput)
            except Exception as err:
                report |= failure(err)
            yield report
            if _failed(report):
                return
    finally:
        dist.destroy_process_group()


def _measure_rank(spec: JobSpec, method: Method, batch_size: int, device, mesh, throughput: bool) -> dict:
    tracker = RankTracker()
    with trial_in_mode(spec, method, batch_size, device=device) as run:  # the same seed on every rank
        same_model_on_every_rank(run.trial.model, device)
        out = sharded_trial(spec, run.trial, device, mesh, tracker, spec.device)
        record = run.leave_mode()
        if isinstance(
            record, CPUAllocatorRecord
        ):  # the allocator's count over the steps (wrapping's transient left out)
            out["first_step_peak_bytes"] = record.peak(FIRST_STEP)
            out["peak_bytes"] = max(record.peak(r) for r in (FIRST_STEP, STEADY))
            reconcile(out)  # the breakdowns sum to these peaks
        if throughput and "throughput" in spec.measurements:
            out |= measure_throughput(run.trial, spec, batch_size * spec.seq_len, batch_size)
        return out


def same_model_on_every_rank(model: torch.nn.Module, device: torch.device) -> None:
    """Raise unless every rank built the same parameters: nothing else makes them equal (DDP skips
    its start-up broadcast, FSDP shards each rank's own copy), and replicas that differ would train
    and be measured as one model. A float64 sum per rank (equal tensors, equal sums), all-reduced."""
    dist = distributed()[0]
    total = sum((p.detach().sum(dtype=torch.float64) for p in model.parameters()), torch.zeros((), dtype=torch.float64))
    extremes = torch.stack([total, -total]).to(device)
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    if extremes[0].item() != -extremes[1].item():
        raise RuntimeError(
            f"the ranks built different models (parameter sums from {-extremes[1].item()!r} to "
            f"{extremes[0].item()!r}): building it is not deterministic under one seed"
        )


def _main(folder: str, rank: int) -> None:
    die_with_parent()
    task = json.loads(Path(folder, "task.json").read_text())
    reports: list[dict] = []
    try:
        spec = JobSpec.model_validate_json(task["spec"])
        methods = [parse_method(m) for m in task["methods"]]
        for report in run_rank(spec, methods, task["batch_size"], rank, task["port"], task["throughput"]):
            reports.append(report)
    except Exception as err:  # the process group itself
        reports.append({"rank": rank} | failure(err))
    tmp = Path(folder, f"{rank}.json.tmp")
    tmp.write_text(json.dumps(reports))
    tmp.rename(Path(folder, f"{rank}.json"))  # whole or absent for the launcher


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]))
