"""Run a job: each method in a child process with a time limit, so a crash, an OOM kill or a
hang becomes that method's recorded outcome instead of taking the caller down."""

from __future__ import annotations

import datetime
import multiprocessing as mp
import queue as queue_mod
import time
import traceback
import uuid
from collections.abc import Callable

from .methods_grammar import parse_method
from .spec import JobSpec

Progress = Callable[[int, int, str], None]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def units_per_method(spec: JobSpec, method_name: str) -> int:
    method = parse_method(method_name)
    n = len(spec.batch_sizes) if {"peak_memory", "throughput"} & set(spec.measurements) else 0
    n += "max_batch_size" in spec.measurements
    n += "fidelity" in spec.measurements and method.sampler is not None
    n += spec.convergence.epochs if "convergence" in spec.measurements else 0
    return n


def run_method(spec_json: str, method_name: str, emit: Callable[[dict], None]) -> None:
    """Everything for one method, in this process; results go out through emit()."""
    from . import trials
    from .environment import describe

    spec = JobSpec.model_validate_json(spec_json)
    method = parse_method(method_name)
    emit({"kind": "environment", "data": describe(spec.device)})
    if {"peak_memory", "throughput"} & set(spec.measurements):
        for b in spec.batch_sizes:
            emit({"kind": "row", "data": trials.trial_row(spec, method, b)})
    if "max_batch_size" in spec.measurements:
        emit({"kind": "max_batch", "data": trials.max_batch_row(spec, method)})
    if "fidelity" in spec.measurements and method.sampler is not None:
        emit({"kind": "fidelity", "data": trials.fidelity_rows(spec, method, min(spec.batch_sizes))})
    if "convergence" in spec.measurements:
        from .convergence import convergence_row

        def tick(message: str) -> None:
            emit({"kind": "tick", "data": message})

        emit({"kind": "convergence", "data": convergence_row(spec, method, trials.device_for(spec), tick)})


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (a measurement outliving a worker
    killed -9, or a local worker outliving `serve`)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(spec_json: str, method_name: str, q) -> None:
    die_with_parent()
    try:
        run_method(spec_json, method_name, q.put)
    except BaseException as err:  # report, then die: the parent records it against the method
        q.put({"kind": "error", "data": f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=5)}"})
    q.put({"kind": "done"})


def run_job(
    spec: JobSpec,
    job_id: str | None = None,
    progress: Progress | None = None,
    isolate: bool = True,
    should_cancel: Callable[[], bool] | None = None,
) -> dict:
    result = {
        "id": job_id or uuid.uuid4().hex[:12],
        "status": "running",
        "spec": spec.model_dump(mode="json"),
        "results": [],
        "max_batch": [],
        "fidelity": [],
        "convergence": [],
        "environment": None,
        "errors": [],
        "started_at": _now(),
        "finished_at": None,
    }
    total = sum(units_per_method(spec, m) for m in spec.methods)
    done = 0
    for method_name in spec.methods:
        if should_cancel and should_cancel():
            result["status"] = "cancelled"
            break

        def handle(event: dict, method_name=method_name) -> None:
            nonlocal done
            kind, data = event["kind"], event.get("data")
            if kind == "environment":
                result["environment"] = result["environment"] or data
            elif kind == "row":
                result["results"].append(data)
                if data.get("error"):
                    result["errors"].append(f"{method_name} batch {data['batch_size']}: {data['error']}")
            elif kind == "max_batch":
                result["max_batch"].append(data)
            elif kind == "fidelity":
                result["fidelity"].extend(data)
            elif kind == "convergence":
                result["convergence"].append(data)
            elif kind == "error":
                result["errors"].append(f"{method_name}: {data}")
            if kind in ("row", "max_batch", "fidelity", "tick") and progress:
                done += 1
                progress(done, total, f"{method_name}: {data if kind == 'tick' else kind + ' done'}")

        if isolate:
            if _run_isolated(spec, method_name, handle, should_cancel) == "cancelled":
                result["status"] = "cancelled"
                break
        else:
            try:
                run_method(spec.model_dump_json(), method_name, handle)
            except Exception as err:
                handle({"kind": "error", "data": f"{type(err).__name__}: {err}"})
    if result["status"] == "running":
        result["status"] = "failed" if result["errors"] else "succeeded"
    result["finished_at"] = _now()
    return result


def _run_isolated(
    spec: JobSpec, method_name: str, handle: Callable[[dict], None], should_cancel: Callable[[], bool] | None = None
) -> str:
    """Run one method in a child; returns "done", "failed" or "cancelled"."""
    ctx = mp.get_context("spawn")  # fork would inherit CUDA state and locks
    q = ctx.Queue()
    proc = ctx.Process(target=_child, args=(spec.model_dump_json(), method_name, q), daemon=True)
    proc.start()
    deadline = time.monotonic() + spec.timeout_s
    outcome = "running"
    while outcome == "running":
        try:
            event = q.get(timeout=0.5)
        except queue_mod.Empty:
            if should_cancel and should_cancel():
                proc.kill()
                outcome = "cancelled"
                break
            if not proc.is_alive():
                code = proc.exitcode
                why = f"killed by signal {-code}" if code and code < 0 else f"exited with code {code}"
                if code == -9:
                    why += " (often the kernel's out-of-memory killer)"
                handle({"kind": "error", "data": f"measurement process {why} before finishing"})
                outcome = "failed"
                break
            if time.monotonic() > deadline:
                proc.kill()
                handle({"kind": "error", "data": f"timed out after {spec.timeout_s:g} s (timeout_s) and was killed"})
                outcome = "failed"
                break
            continue
        if event["kind"] == "done":
            outcome = "done"
        else:
            handle(event)
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
    return outcome
