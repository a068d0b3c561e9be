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
from pathlib import Path

from contract.measurements import FIELDS
from contract.methods import parse_method
from contract.results import JobResult, JobStatus
from contract.rows import Environment
from contract.spec import JobSpec

from .producers import producers_for

Progress = Callable[[int, int, str], None]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def units_per_method(spec: JobSpec, method_name: str) -> int:
    method = parse_method(method_name)
    return sum(producer.units(spec, method) for _, producer in producers_for(spec))


def run_method(spec_json: str, method_name: str, emit: Callable[[dict], None]) -> None:
    """Everything for one method, in this process; results go out through emit() as plain data
    (they cross a process boundary) and are validated again where they are collected."""
    from .environment import describe

    spec = JobSpec.model_validate_json(spec_json)
    method = parse_method(method_name)
    emit({"kind": "environment", "data": describe(spec.device, spec)})

    def tick(message: str) -> None:
        emit({"kind": "tick", "data": message})

    for field, producer in producers_for(spec):
        for rows in producer.run(spec, method, tick):
            emit({"kind": "rows", "field": field, "data": [r.model_dump(mode="json") for r in rows]})
    _report_kernel_failures(spec, emit)


def _report_kernel_failures(spec: JobSpec, emit: Callable[[dict], None]) -> None:
    # a kernel that raised turned the Triton kernels off mid-run: the rows after it timed the PyTorch
    # reference while the environment says triton, so the job must say so
    from wtacrs import kernels

    if spec.device == "cuda" and kernels.failures:
        emit(
            {
                "kind": "error",
                "data": f"the Triton kernels failed mid-run ({kernels.failures[0]}); later rows ran the PyTorch "
                f"reference. Rerun with {kernels.ENV}=0 (reference only) or {kernels.ENV}=strict (raise at once)",
            }
        )


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
        # the user reads one line (what failed, and where); the traceback goes to the worker's log
        traceback.print_exc(limit=8)
        frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
        where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
        q.put({"kind": "error", "data": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}{where}"})
    q.put({"kind": "done"})


def run_job(
    spec: JobSpec,
    job_id: str | None = None,
    progress: Progress | None = None,
    isolate: bool = True,
    should_cancel: Callable[[], bool] | None = None,
) -> JobResult:
    result = JobResult(
        id=job_id or uuid.uuid4().hex[:12],
        status=JobStatus.running,
        spec=spec.model_dump(mode="json"),
        started_at=_now(),
    )
    total = sum(units_per_method(spec, m) for m in spec.methods)
    done = 0
    for method_name in spec.methods:
        if should_cancel and should_cancel():
            result.status = JobStatus.cancelled
            break

        def handle(event: dict, method_name=method_name) -> None:
            nonlocal done
            kind, data = event["kind"], event.get("data")
            if kind == "environment":
                result.environment = result.environment or Environment.model_validate(data)
            elif kind == "rows":
                rows = [FIELDS[event["field"]].model_validate(r) for r in data]
                getattr(result, event["field"]).extend(rows)
                # a trial that failed for a reason other than memory is the job's error too
                result.errors.extend(
                    f"{method_name} batch {r.batch_size}: {r.error}" for r in rows if getattr(r, "error", None)
                )
            elif kind == "error":
                result.errors.append(f"{method_name}: {data}")
            if kind in ("rows", "tick") and progress:
                done += 1
                what = data if kind == "tick" else f"{event['field']} done"
                progress(done, total, f"{method_name}: {what}")

        if isolate:
            if _run_isolated(spec, method_name, handle, should_cancel) == "cancelled":
                result.status = JobStatus.cancelled
                break
        else:
            try:
                run_method(spec.model_dump_json(), method_name, handle)
            except Exception as err:
                handle({"kind": "error", "data": f"{type(err).__name__}: {err}"})
    if result.status == JobStatus.running:
        result.status = JobStatus.failed if result.errors else JobStatus.succeeded
    result.finished_at = _now()
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
