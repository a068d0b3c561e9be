"""Run a job: its methods in a child process with a time limit per method, so a crash, an OOM kill
or a hang becomes that method's recorded outcome instead of taking the caller down; the methods
after a failure run in a fresh child."""

from __future__ import annotations

import datetime
import itertools
import multiprocessing as mp
import os
import queue as queue_mod
import threading
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

from .producers.processes import die_with_parent
from .producers.progress import current, listen
from .producers.registry import producers_for

Progress = Callable[[int, int, str], None]
HEARTBEAT_S = 5.0  # the longest a running job goes without a progress message


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def units_per_method(spec: JobSpec, method_name: str) -> int:
    method = parse_method(method_name)
    return sum(producer.units(spec, method) for _, producer in producers_for(spec))


def run_method(spec_json: str, method_name: str, emit: Callable[[dict], None]) -> None:
    """Everything for one method, in this process; results go out through emit() as plain data
    (they cross a process boundary) and are validated again where they are collected."""
    from .instruments.environment import describe
    from .trial.build import optimizer_impl

    spec = JobSpec.model_validate_json(spec_json)
    method = parse_method(method_name)
    environment = describe(spec.device) | {"optimizer": spec.optimizer, "optimizer_impl": optimizer_impl(spec)}
    emit({"kind": "environment", "data": environment})

    def tick(message: str) -> None:
        emit({"kind": "tick", "data": message})

    for field, producer in producers_for(spec):
        for rows in producer.run(spec, method, tick):
            emit({"kind": "rows", "field": field, "data": [r.model_dump(mode="json") for r in rows]})
    _report_kernel_failures(spec, emit)


def _report_kernel_failures(spec: JobSpec, emit: Callable[[dict], None]) -> None:
    # a kernel that raised turned the Triton kernels off mid-run: the rows after it timed (an estimate:
    # traced) the PyTorch reference while the environment says triton, so the job must say so
    from wtacrs import kernels

    if spec.device in ("cuda", "estimate") and kernels.failures:
        emit(
            {
                "kind": "error",
                "data": f"the Triton kernels failed mid-run ({kernels.failures[0]}); later rows ran the PyTorch "
                f"reference. Rerun with {kernels.ENV}=0 (reference only) or {kernels.ENV}=strict (raise at once)",
            }
        )


def _run_methods(spec_json: str, take: Callable[[], str | None], emit: Callable[[dict], None]) -> None:
    """The methods take() hands out, in turn, each announced ("start") and finished ("method-done");
    announcements of the step in progress go out as "status" events."""
    listen(lambda message: emit({"kind": "status", "data": message}))
    try:
        while (name := take()) is not None:
            emit({"kind": "start", "data": name})
            run_method(spec_json, name, emit)
            emit({"kind": "method-done", "data": name})
    finally:
        listen(None)


CLAIM_WAIT_S = 30.0


def claim(methods: list[str], claims, who: int) -> str | None:
    """The next method no process has claimed, claimed for `who`; None when none is left. `claims`:
    a shared array (multiprocessing.Array), one owner per method, -1 where none yet."""
    lock = claims.get_lock()
    if not lock.acquire(timeout=CLAIM_WAIT_S):  # held for microseconds, unless its holder died holding it
        raise RuntimeError("the job's method claims stayed locked: a measurement process died holding the lock")
    try:
        for i, owner in enumerate(claims):
            if owner == -1:
                claims[i] = who
                return methods[i]
        return None
    finally:
        lock.release()


def _heartbeat(q, stop: threading.Event) -> None:
    """Repeat the step in progress every HEARTBEAT_S seconds, from a thread that is not measuring."""
    while not stop.wait(HEARTBEAT_S):
        message = current()
        if message is not None:
            q.put({"kind": "status", "data": message})


def _child(spec_json: str, methods: list[str], claims, who: int, first: str, one: bool, q) -> None:
    die_with_parent()
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(q, stop), daemon=True).start()
    try:
        taken = []

        def take() -> str | None:  # `first`, claimed by the parent for it, then what it claims itself
            name = first if not taken else None if one else claim(methods, claims, who)
            taken.append(name)
            return name

        _run_methods(spec_json, take, q.put)
    except BaseException as err:  # report, then die: the parent records it against the method
        # the user reads one line (what failed, and where); the traceback goes to the worker's log
        traceback.print_exc(limit=8)
        frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
        where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
        q.put({"kind": "error", "data": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}{where}"})
    stop.set()
    q.put({"kind": "done"})


def shares_a_process(spec: JobSpec) -> bool:
    """Whether a job's methods may run one after another in one child process. On cpu and estimate
    they may: each trial's peaks are counted above what was allocated before its model was built,
    and imports are paid once. On cuda each method gets a fresh process: the allocator's peak
    counts all that lives in the process, and a CUDA error can leave its context unusable."""
    return spec.device != "cuda"


MAX_LANES = 4  # children an estimate job runs at once, at most (each traces on one core)


def lanes(spec: JobSpec) -> int:
    """How many children run a job's methods at the same time, each taking the next method nobody
    has taken. An estimate's traces are pure computation on one core, independent between methods
    (their trace cache entries too), reading no clock or allocator: one child per core this process
    may use (an estimate of ranks traces rank 0 in its own process, under a fake process group). A
    measurement (cpu, cuda) runs its methods one at a time, alone on the machine."""
    if spec.device != "estimate":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(len(spec.methods), cores, MAX_LANES))


def run_job(
    spec: JobSpec,
    job_id: str | None = None,
    progress: Progress | None = None,
    isolate: bool = True,
    should_cancel: Callable[[], bool] | None = None,
) -> JobResult:
    """Run every method of `spec`. `isolate`: in child processes with the spec's time limit per
    method (one for the whole job where `shares_a_process`, a fresh one after any failure; an
    estimate's methods in several at once, `lanes`)."""
    result = JobResult(
        id=job_id or uuid.uuid4().hex[:12],
        status=JobStatus.running,
        spec=spec.model_dump(mode="json"),
        started_at=_now(),
    )
    total = sum(units_per_method(spec, m) for m in spec.methods)
    done = 0
    current_method = spec.methods[0]
    doing: dict[str, str] = {}  # method -> the step in progress, of the methods running now
    lock = threading.Lock()  # lanes report from threads of their own

    def handle(event: dict) -> None:
        with lock:
            _handle(event)

    def _handle(event: dict) -> None:
        nonlocal done, current_method
        kind, data = event["kind"], event.get("data")
        if kind == "start":
            current_method = data
        method = event.get("method") or current_method  # a lane's events name their method
        if kind == "environment":
            result.environment = result.environment or Environment.model_validate(data)
        elif kind == "rows":
            rows = [FIELDS[event["field"]].model_validate(r) for r in data]
            getattr(result, event["field"]).extend(rows)
            # a trial that failed for a reason other than memory is the job's error too
            result.errors.extend(f"{method} batch {r.batch_size}: {r.error}" for r in rows if getattr(r, "error", None))
        elif kind == "error":
            result.errors.append(f"{method}: {data}")
        if kind in ("rows", "tick"):
            done += 1
            doing[method] = data if kind == "tick" else f"{event['field']} done"
        elif kind == "status":
            doing[method] = data
        elif kind == "method-done":
            doing.pop(method, None)
        if progress and kind in ("rows", "tick", "status"):
            # each method in progress (lanes run several at once), latest first
            doing[method] = doing.pop(method)
            progress(done, total, " · ".join(f"{m}: {what}" for m, what in reversed(doing.items())))

    if isolate:
        methods, ctx = list(spec.methods), mp.get_context("spawn")  # fork would inherit CUDA state and locks
        claims = ctx.Array("i", [-1] * len(methods))
        children = itertools.count()
        outcomes, raised, stop = [], [], threading.Event()

        def stopped() -> bool:  # cancelled, or another lane raised: every child is killed
            return stop.is_set() or bool(should_cancel and should_cancel())

        def lane() -> None:  # children, one after another, each started with a method claimed for it
            try:
                while not stopped():
                    who = next(children)
                    first = claim(methods, claims, who)
                    if first is None:
                        return
                    if _run_isolated(spec, methods, (ctx, claims, who, first), handle, stopped) == "cancelled":
                        break
                outcomes.append("cancelled")
            except BaseException as err:  # the job's to raise (the worker retries it), after every lane stopped
                raised.append(err)
                stop.set()

        threads = [threading.Thread(target=lane, daemon=True) for _ in range(lanes(spec) - 1)]
        for thread in threads:
            thread.start()
        lane()
        for thread in threads:
            thread.join()
        if raised:
            raise raised[0]
        if outcomes:
            result.status = JobStatus.cancelled
        order = {name: i for i, name in enumerate(methods)}
        for field in FIELDS:  # lanes finish in any order; rows keep the spec's order of methods
            getattr(result, field).sort(key=lambda row: order.get(row.method, len(order)))
    else:
        for name in spec.methods:
            if should_cancel and should_cancel():
                result.status = JobStatus.cancelled
                break
            handle({"kind": "start", "data": name})
            listen(lambda message: handle({"kind": "status", "data": message}))
            try:
                run_method(spec.model_dump_json(), name, handle)
            except Exception as err:
                handle({"kind": "error", "data": f"{type(err).__name__}: {err}"})
            finally:
                listen(None)
                handle({"kind": "method-done", "data": name})
    if result.status == JobStatus.running:
        result.status = JobStatus.failed if result.errors else JobStatus.succeeded
    result.finished_at = _now()
    return result


def _run_isolated(
    spec: JobSpec,
    methods: list[str],
    child: tuple,
    handle: Callable[[dict], None],
    should_cancel: Callable[[], bool] | None = None,
) -> str:
    """Run one child that runs `first` (claimed for it), then claims the next method nobody has and
    runs it, in turn (no more, where not `shares_a_process`), each within spec.timeout_s. `child`:
    (multiprocessing context, the shared claims, this child's number, first). Returns "done",
    "failed" (every method it claimed and did not finish is recorded as failed) or "cancelled"."""
    ctx, claims, who, first = child
    q = ctx.Queue()
    args = (spec.model_dump_json(), methods, claims, who, first, not shares_a_process(spec), q)
    proc = ctx.Process(target=_child, args=args, daemon=True)
    proc.start()
    deadline = time.monotonic() + spec.timeout_s
    outcome = "running"
    current = first  # a child that dies before it says so dies in it
    finished = set()
    dead = False

    def tell(event: dict, method: str | None = None) -> None:
        handle({**event, "method": method or current})

    def fail(why: str) -> str:
        # what it claimed and did not finish: the method it was in, and one it may have claimed
        # without living to announce it (events still in a killed child's queue are lost)
        for i, method in enumerate(methods):
            if claims[i] == who and method not in finished:
                tell({"kind": "error", "data": why}, method)
        return "failed"

    try:
        while outcome == "running":
            try:
                event = q.get(timeout=0.5)
            except queue_mod.Empty:
                if should_cancel and should_cancel():
                    outcome = "cancelled"
                elif not proc.is_alive():
                    if not dead:  # what it sent before it died may still be on its way: read that first
                        dead = True
                        continue
                    code = proc.exitcode
                    why = f"killed by signal {-code}" if code and code < 0 else f"exited with code {code}"
                    if code == -9:
                        why += " (often the kernel's out-of-memory killer)"
                    outcome = fail(f"measurement process {why} before finishing")
                elif time.monotonic() > deadline:
                    proc.kill()
                    outcome = fail(f"timed out after {spec.timeout_s:g} s (timeout_s) and was killed")
                continue
            kind = event["kind"]
            if kind == "done":  # after an "error" (the child's exception, recorded) it failed
                outcome = "failed" if current is not None else "done"
                continue
            if kind in ("start", "method-done"):
                deadline = time.monotonic() + spec.timeout_s  # the limit is per method
            if kind == "start":
                current = event["data"]
            elif kind == "method-done":
                tell(event)
                finished.add(current)
                current = None
                continue
            tell(event)
    finally:  # however this ends (an exception here included), the child does not outlive it
        if outcome != "done":
            proc.kill()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    return outcome
