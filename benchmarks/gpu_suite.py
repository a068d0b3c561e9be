"""Everything worth a GPU lease in one command, most valuable first, each part inside its own budget.

Parts, in the order of their value (`--plan` prints them with their budgets, and exits):

1. memory: the paper's Table 2 setting (batch 100, length 128) for T5-Large and T5-Base fp32, every
   method (`+checkpointing` combinations included), measured on the GPU and estimated (FakeTensorMode,
   cuda-sm90 kernels) side by side, with the estimate's error. T5-Large first: it has no reference yet.
2. max batch on CUDA, T5-Base fp32, full and wtacrs@0.3, searched twice (B fits, B+1 does not, the
   same answer both times).
3. the `cuda`-marked tests (the Triton kernels and the direct route first), in a subprocess with a
   bounded timeout of their own.
4. step time at equal batch, the methods side by side (benchmarks/step_time.py): T5-Base and
   T5-Large fp32, MiniLM-L6 at batch 32, T5-Large and T5-Base bf16.
5. bf16: T5-Base bf16 memory; LLaMA-1B with bf16 weights, lora and lora+wtacrs@0.3, memory and step time.
6. compiled steps: T5-Base, full and wtacrs@0.3, torch.compile(mode="reduce-overhead").

The budget (`--budget-s`) is split by the parts' shares into a schedule: part i must end by
start + budget * (its share and all earlier shares) / (all shares). A part that ends early leaves
its time to the next; a part that runs long is cut at its own end, so it never takes what the
parts after it were given (a slow T5-Large cannot starve T5-Base, nor the tests the step times).
A part whose window is too short to do anything is skipped and listed. Nothing is predicted.

Every part writes what it measured the moment it has it: the memory parts after each method of
either mode, the max-batch part after each search, the step-time part after each timed round (so a
cut part keeps its timed methods), the tests as pytest reports each one. `--parts` picks parts by
name, so a second lease can take what the first cut or skipped.

Output in `--out-dir` (on a lease, $OUT), never more than MAX_OUT_FILES files and no folder:
`results.json` ({"environment", "suite", "plan", "cuda_tests", "jobs": {setting: {"cuda": job,
"estimate": job}}, "comparison", "max_batch", "step_time", "skipped"}), `report.md`, and one
`<model>-b<B>-l<L>-<dtype>-<gpu>.json` per memory setting, shaped like
../shared/gpu-reference/*.json: copy it to benchmarks/gpu-reference/ and
tests/profiler/test_estimate_vs_gpu.py checks the estimate against it. Scratch files (the estimate's
per-method jobs, step_time.py's JSON, pytest's output) live in a temporary folder outside it.

On a lease: `bash benchmarks/gpu_lease.sh` (the README's "On a GPU host" says how to call it).
Smoke run without a GPU: `PYTHONPATH=. .venv/bin/python benchmarks/gpu_suite.py --quick --device cpu
--in-process` (tiny models, `cpu` mode in place of `cuda`; the cuda tests run and skip).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_report import compare, header, render, section  # noqa: E402

GIB = 2**30
# Table 2's methods, the most asked-for first (a cut part keeps the first ones), then the
# `+checkpointing` combinations
MEMORY_METHODS = (
    "full",
    "wtacrs@0.3",
    "lora",
    "lora+wtacrs@0.3",
    "checkpointing",
    "wtacrs@0.1",
    "lora+wtacrs@0.1",
    "lora+checkpointing",
    "wtacrs@0.3+checkpointing",
    "lora+wtacrs@0.3+checkpointing",
)
MAXBATCH_METHODS = ("full", "wtacrs@0.3")
MAXBATCH_REPEATS = 2  # the same answer twice
STEP_METHODS = ("full", "wtacrs@0.3", "lora", "lora+wtacrs@0.3")
# the most files --out-dir may hold: results.json, report.md, the memory settings' reference files;
# the lease script's log is the 8th file under $OUT
MAX_OUT_FILES = 7
# below this many seconds a part of this kind is skipped rather than started
MIN_WINDOW_S = {"memory": 20.0, "maxbatch": 20.0, "tests": 15.0, "steptime": 20.0}
QUICK_MIN_WINDOW_S = 3.0
# the cuda tests, most valuable first: the Triton kernels and the direct route, then the rest
TEST_FILES_FIRST = ("tests/wtacrs/test_kernels.py", "tests/wtacrs/test_dispatch.py", "tests/wtacrs/test_layer.py")


@dataclass
class Part:
    name: str
    kind: str  # "memory", "maxbatch", "tests" or "steptime"
    share: float
    model: str = ""
    dtype: str = "fp32"
    methods: tuple[str, ...] = ()
    batch: int | None = None  # None: the suite's (100, or 4 with --quick)
    seq: int | None = None
    compile: str | None = None  # step time under torch.compile(mode=...)
    start_s: float = 0.0  # the schedule: offsets from the suite's start
    end_s: float = 0.0
    value: int = 0  # the rank (1 = most valuable)

    def describe(self) -> dict:
        keys = ("name", "kind", "value", "model", "dtype", "methods", "batch", "seq", "compile", "share")
        return {k: getattr(self, k) for k in keys} | {"start_s": round(self.start_s, 1), "end_s": round(self.end_s, 1)}


def all_parts(quick: bool) -> list[Part]:
    """Every part, in the order of their value; `share` is a relative weight of the budget."""
    if quick:  # the same plumbing on tiny models, on a CPU in seconds
        return [
            Part("memory-t5-tiny-fp32", "memory", 3, "t5-tiny", methods=MEMORY_METHODS[:4], value=1),
            Part("memory-bert-tiny-fp32", "memory", 2, "bert-tiny", methods=MEMORY_METHODS, value=1),
            Part("maxbatch-t5-tiny-fp32", "maxbatch", 2, "t5-tiny", methods=MAXBATCH_METHODS, value=2),
            Part("tests", "tests", 2, value=3),
            Part("steptime-bert-tiny-fp32", "steptime", 2, "bert-tiny", methods=STEP_METHODS, value=4),
            Part("memory-bert-tiny-bf16", "memory", 1, "bert-tiny", "bf16", methods=MEMORY_METHODS[:2], value=5),
        ]
    steptime = lambda model, dtype, share, batch=None: Part(  # noqa: E731
        f"steptime-{model}-{dtype}", "steptime", share, model, dtype, STEP_METHODS, batch=batch, value=4
    )
    return [
        Part("memory-t5-large-fp32", "memory", 36, "t5-large", methods=MEMORY_METHODS, value=1),
        Part("memory-t5-base-fp32", "memory", 18, "t5-base", methods=MEMORY_METHODS, value=1),
        Part("maxbatch-t5-base-fp32", "maxbatch", 14, "t5-base", methods=MAXBATCH_METHODS, value=2),
        Part("tests", "tests", 12, value=3),
        steptime("t5-base", "fp32", 6),
        steptime("t5-large", "fp32", 6),
        steptime("minilm", "fp32", 2, batch=32),
        steptime("t5-large", "bf16", 2),
        steptime("t5-base", "bf16", 1),
        Part("memory-t5-base-bf16", "memory", 1, "t5-base", "bf16", MEMORY_METHODS[:7], value=5),
        Part(
            "memory-llama-1b-bf16-weights",
            "memory",
            0.5,
            "llama-1b",
            "bf16-weights",
            ("lora", "lora+wtacrs@0.3"),
            batch=8,
            seq=512,
            value=5,
        ),
        Part(
            "steptime-llama-1b-bf16-weights",
            "steptime",
            0.5,
            "llama-1b",
            "bf16-weights",
            ("lora", "lora+wtacrs@0.3"),
            batch=8,
            seq=512,
            value=5,
        ),
        Part(
            "steptime-t5-base-fp32-compiled",
            "steptime",
            1,
            "t5-base",
            "fp32",
            ("full", "wtacrs@0.3"),
            compile="reduce-overhead",
            value=6,
        ),
    ]


def schedule(parts: list[Part], budget_s: float) -> list[Part]:
    """Each part's window in a budget of budget_s: consecutive, in order, sized by share."""
    total = sum(p.share for p in parts) or 1.0
    done = 0.0
    for p in parts:
        p.start_s = budget_s * done / total
        done += p.share
        p.end_s = budget_s * done / total
    return parts


def plan(args) -> list[Part]:
    parts = all_parts(args.quick)
    if args.parts:
        wanted = args.parts.split(",")
        unknown = sorted(set(wanted) - {p.name for p in parts})
        if unknown:
            sys.exit(f"unknown parts {unknown}; known: {[p.name for p in parts]}")
        parts = [p for p in parts if p.name in wanted]
    parts = [p for p in parts if not (p.kind == "tests" and args.skip_tests)]
    n_files = 2 + sum(p.kind == "memory" for p in parts)
    assert n_files <= MAX_OUT_FILES, f"{n_files} output files planned, at most {MAX_OUT_FILES}"
    return schedule(parts, args.budget_s)


def format_plan(parts: list[Part], budget_s: float) -> str:
    lines = [
        f"plan: {len(parts)} parts in {budget_s:g} s; a part ends by the end of its window (s after the start)"
        " and starts when the one before it ends, so time an earlier part leaves is passed on"
    ]
    for i, p in enumerate(parts, 1):
        what = p.model and f"{p.model} {p.dtype}" + (f" B{p.batch}" if p.batch else "") + (
            f" L{p.seq}" if p.seq else ""
        )
        what += f", compiled ({p.compile})" if p.compile else ""
        methods = f": {', '.join(p.methods)}" if p.methods else ""
        lines.append(
            f"{i:2d}. [{p.value}] {p.name:<34} {p.end_s - p.start_s:6.0f} s  "
            f"[{p.start_s:5.0f}, {p.end_s:5.0f}]  {what}{methods}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- specs


def make_spec(fields: dict):
    from contract.spec import JobSpec

    if "estimate_device" not in JobSpec.model_fields:  # a spec.py from before the sm90 estimate
        fields = {k: v for k, v in fields.items() if k != "estimate_device"}
    return JobSpec.model_validate(fields)


def memory_specs(args, part: Part, total_gib: float):
    base = {"model": part.model, "methods": list(part.methods), "seq_len": part.seq or args.seq_len}
    base |= {"batch_sizes": [part.batch or args.batch], "dtype": part.dtype}
    # memory only: the step-time parts time the steps (side by side, which is what a ratio needs)
    measured = make_spec(base | {"device": args.device, "measurements": ["peak_memory"], "steps": 1, "warmup": 0})
    estimate = make_spec(
        base
        | {
            "device": "estimate",
            "measurements": ["peak_memory"],
            "steps": 1,
            "warmup": 0,
            "target_memory_gb": round(total_gib, 2),
            # like against like: a CPU smoke run compares with a trace of CPU kernels
            "estimate_device": "cuda-sm90" if args.device == "cuda" else "cpu",
        }
    )
    return measured, estimate


def maxbatch_spec(args, part: Part):
    fields = {"model": part.model, "methods": list(part.methods), "seq_len": part.seq or args.seq_len}
    fields |= {"dtype": part.dtype, "device": args.device, "measurements": ["max_batch_size"]}
    fields["max_batch"] = {"upper": args.max_batch_upper}
    if args.device == "cpu":  # host memory has no hard limit to probe against: a small one for the smoke run
        fields["target_memory_gb"] = 1.0
    return make_spec(fields)


def one_method(spec, method: str):
    return spec.model_copy(update={"methods": [method]})


def merge_jobs(spec, jobs: list[dict], cut: bool) -> dict:
    """One job result from single-method job results, in the spec's method order."""
    results, max_batch, errors = [], [], []
    for job in jobs:
        results += job.get("results", [])
        max_batch += job.get("max_batch", [])
        errors += job.get("errors", [])
    # a method's job cancelled before it reported anything was cut, not run
    done = {
        m
        for job in jobs
        if job.get("status") != "cancelled" or job.get("results") or job.get("max_batch")
        for m in job["spec"]["methods"]
    }
    missing = [m for m in spec.methods if m not in done]
    status = "cancelled" if cut and missing else ("failed" if errors else "succeeded")
    out = {"status": status, "spec": spec.model_dump(mode="json"), "results": results, "max_batch": max_batch}
    out |= {"errors": errors, "not_run": missing}
    env = next((j.get("environment") for j in jobs if j.get("environment")), None)
    return out | ({"environment": env} if env else {})


# ---------------------------------------------------------------- processes


def child_env(**extra: str) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return os.environ | {"PYTHONPATH": path, "PYTHONUNBUFFERED": "1"} | extra


def run_until(cmd: list[str], deadline: float, *, env: dict, stdout=None, poll=None) -> int | None:
    """Run cmd (in its own process group) until it exits or the deadline passes (then the group is
    killed: None). `poll()` is called about once a second while it runs."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        while True:
            try:
                return proc.wait(timeout=max(0.05, min(1.0, deadline - time.time())))
            except subprocess.TimeoutExpired:
                if poll:
                    poll()
                if time.time() >= deadline:
                    return None
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its children (spawned per method) too
            except ProcessLookupError:
                pass
            proc.wait()


def describe_environment(device: str) -> dict:
    """In a child for cuda: a CUDA context in this process would hold GPU memory the whole run,
    lowering every max batch found after it."""
    code = "import json, sys; from profiler.instruments.environment import describe; print(json.dumps(describe(sys.argv[1])))"
    out = subprocess.run([sys.executable, "-c", code, device], capture_output=True, text=True, env=child_env())
    if out.returncode:
        sys.exit(f"could not describe the {device} environment:\n{out.stderr[-2000:]}")
    env = json.loads(out.stdout.strip().splitlines()[-1])
    if device == "cuda" and "cuda_version" not in env:
        sys.exit("torch sees no CUDA device here; use --device cpu for a smoke run")
    if not env.get("git_revision"):  # a lease's copy of the tree has no .git: gpu_wheels.sh wrote it
        rev = os.environ.get("WTACRS_REVISION") or _read(ROOT / "gpu_wheels" / "REVISION")
        env["git_revision"] = rev.strip() if rev else None
    return env


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def gpu_tag(env: dict) -> str:
    found = re.search(r"\b([A-Z]\d{2,4})\b", env.get("device_name", "")) if env.get("mode") == "cuda" else None
    return found.group(1).lower() if found else env.get("mode", "cpu")


# ---------------------------------------------------------------- the suite's state


class Suite:
    """The state, and the one way to change it: `update`, which rewrites results.json and report.md
    (and the reference files) at once, under a lock (the estimate's threads report too)."""

    def __init__(self, args, env: dict, parts: list[Part]):
        self.args, self.lock = args, threading.RLock()
        self.tag = gpu_tag(env)
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        target_gib = (env.get("device_total_bytes") or 80 * GIB) / GIB
        suite = {"argv": sys.argv, "date": date, "budget_s": args.budget_s, "gpu_tag": self.tag}
        suite |= {"target_gib": target_gib, "timings": {}, "reference_files": {}, "elapsed_s": 0.0}
        suite["estimate_device"] = "cuda-sm90" if args.device == "cuda" else "cpu"
        self.state = {"environment": env, "suite": suite, "plan": [p.describe() for p in parts]}
        self.state |= {"cuda_tests": None, "jobs": {}, "comparison": {}, "max_batch": {}, "step_time": {}}
        self.state["skipped"] = []

    def update(self, fn=None) -> None:
        with self.lock:
            if fn:
                fn(self.state)
            self.save()

    def save(self) -> None:
        args, state = self.args, self.state
        state["suite"]["elapsed_s"] = round(time.monotonic() - args.t0, 1)
        for name, pair in state["jobs"].items():
            measured = pair.get(args.device) or {}
            if any(not r.get("error") and not r.get("oom") for r in measured.get("results", [])):
                path = args.out_dir / f"{name}-{self.tag}.json"
                _write(path, json.dumps(pair, indent=1))
                state["suite"]["reference_files"][name] = path.name
        _write(args.out_dir / "results.json", json.dumps(state, indent=1))
        _write(args.out_dir / "report.md", render(state, args))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")  # never a half-written file, even when killed mid-write
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------- the parts


def setting_name(args, part: Part) -> str:
    return f"{part.model}-b{part.batch or args.batch}-l{part.seq or args.seq_len}-{part.dtype}"


def run_memory(suite: Suite, part: Part, deadline: float, scratch: Path) -> str:
    """The setting measured (in `args.device` mode) and estimated, one child per method, the estimate
    in a pool of processes beside the measurement; each method's row is written as it comes."""
    from profiler.runner import run_job

    args = suite.args
    name = setting_name(args, part)
    measured, estimate = memory_specs(args, part, suite.state["suite"]["target_gib"])
    done: dict[str, list[dict]] = {args.device: [], "estimate": []}
    specs = {args.device: measured, "estimate": estimate}
    cut = {args.device: False, "estimate": False}

    def record(mode: str, job: dict | None = None) -> None:
        def change(state):
            if job is not None:
                done[mode].append(job)
            pair = {m: merge_jobs(specs[m], done[m], cut[m] or time.time() >= deadline) for m in specs}
            state["jobs"][name] = pair
            state["comparison"][name] = compare(pair[args.device], pair["estimate"])

        suite.update(change)

    def cancel() -> bool:
        return time.time() >= deadline

    def progress(i: int, total: int, message: str) -> None:
        print(f"  [{name} {args.device}] {i}/{total} {message}", file=sys.stderr, flush=True)

    def measure_one(method: str) -> None:
        if cancel():
            cut[args.device] = True
            return
        job = run_job(one_method(measured, method), progress=progress, isolate=not args.in_process,
                      should_cancel=cancel)  # fmt: skip
        record(args.device, job.model_dump(mode="json"))

    def measure_all() -> None:
        # --gpu-jobs children at once: the caching allocator's statistics are per process, so each
        # method's peaks are its own; two T5-Large fp32 steps (about 45 GiB each) fit an 80 GB card
        jobs = 1 if args.in_process else max(1, args.gpu_jobs)
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            for f in [pool.submit(measure_one, m) for m in part.methods]:
                f.result()

    def estimate_one(method: str, threads: int) -> None:
        if cancel():
            cut["estimate"] = True
            return
        spec_path, out = scratch / f"{name}-{method}.spec.json", scratch / f"{name}-{method}.json"
        spec_path.write_text(one_method(estimate, method).model_dump_json())
        out.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--job", str(spec_path), str(out)]
        # a laptop's view (no CUDA context taking GPU memory), and a share of the cores
        env = child_env(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(threads))
        code = run_until(cmd, deadline, env=env)
        if code == 0 and out.exists():
            record("estimate", json.loads(out.read_text()))
        elif code is None:
            cut["estimate"] = True
        else:
            spec = one_method(estimate, method).model_dump(mode="json")
            record("estimate", {"spec": spec, "results": [], "errors": [f"{method}: estimate exited {code}"]})

    if args.in_process or args.serial:
        measure_all()
        if args.in_process:
            for method in part.methods:
                if cancel():
                    cut["estimate"] = True
                    break
                record("estimate", run_job(one_method(estimate, method), isolate=False).model_dump(mode="json"))
        else:
            for method in part.methods:
                estimate_one(method, max(1, (os.cpu_count() or 2) - 1))
    else:
        # The traces run on the CPU beside the GPU measurement, which keeps a few cores for its launches
        cores = os.cpu_count() or 2
        workers = max(1, min(args.estimate_workers, (cores - 4) // 3 if args.device == "cuda" else 1))
        threads = max(1, (cores - (4 if args.device == "cuda" else 1)) // workers)
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(estimate_one, m, threads) for m in part.methods]
            measure_all()
            for f in futures:
                f.result()
    record(args.device)  # the final status (cut or not)
    return name


def run_maxbatch(suite: Suite, part: Part, deadline: float, scratch: Path) -> str:
    """Each method's exact max batch, searched MAXBATCH_REPEATS times (every method once, then again),
    each search written as it ends."""
    from profiler.runner import run_job

    args = suite.args
    name = f"{part.model}-l{part.seq or args.seq_len}-{part.dtype}"
    spec = maxbatch_spec(args, part)
    runs: list[list[dict]] = [[] for _ in range(MAXBATCH_REPEATS)]

    def record(cut: bool) -> None:
        def change(state):
            jobs = [merge_jobs(spec, r, cut) for r in runs if r]
            state["max_batch"][name] = {"runs": jobs, "checks": maxbatch_checks(jobs)}

        suite.update(change)

    for repeat in range(MAXBATCH_REPEATS):
        for method in part.methods:
            if time.time() >= deadline:
                record(cut=True)
                return name
            job = run_job(one_method(spec, method), isolate=not args.in_process,
                          should_cancel=lambda: time.time() >= deadline)  # fmt: skip
            runs[repeat].append(job.model_dump(mode="json"))
            record(cut=time.time() >= deadline)
    return name


def maxbatch_checks(jobs: list[dict]) -> dict:
    """Per method: the answer of each search, whether B fitted and B+1 ran out of memory in the
    probes (capped at the upper bound: no B+1), and whether the searches agree."""
    out: dict[str, dict] = {}
    for job in jobs:
        for row in job.get("max_batch", []):
            b = row["max_batch_size"]
            probes = {p["batch_size"]: p["fits"] for p in row.get("probes", [])}
            exact = row.get("capped_at_upper") or (probes.get(b, b == 0) and probes.get(b + 1) is False)
            check = out.setdefault(row["method"], {"answers": [], "exact": []})
            check["answers"].append(b)
            check["exact"].append(bool(exact))
    for check in out.values():
        check["same"] = len(check["answers"]) >= 2 and len(set(check["answers"])) == 1
    return out


def cuda_test_files() -> list[str]:
    # only the files that hold cuda tests: the GPU host lacks fastapi/sqlalchemy, and collecting
    # tests/app there would turn the run into collection errors
    found = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if "mark.cuda" in p.read_text()}
    return [f for f in TEST_FILES_FIRST if f in found] + sorted(found - set(TEST_FILES_FIRST))


_OUTCOME = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def parse_pytest(output: str) -> dict:
    """Per-test outcomes from `pytest -v` output, complete or cut: {"outcomes", "counts", "summary"}."""
    outcomes = {}
    for line in output.splitlines():
        found = _OUTCOME.match(line.strip())
        if found:
            outcomes[found.group(1)] = found.group(2).lower()
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    summary = next(
        (ln for ln in reversed(output.splitlines()) if re.search(r"\d+ (passed|failed|skipped|errors?)\b", ln)), ""
    )
    collected = re.search(r"collected (\d+) items?(?: / (\d+) deselected)?", output)
    selected = int(collected.group(1)) - int(collected.group(2) or 0) if collected else None
    return {"outcomes": outcomes, "counts": counts, "summary": summary.strip("= "), "selected": selected}


def run_tests(suite: Suite, part: Part, deadline: float, scratch: Path) -> str:
    """`pytest -m cuda -v` on the files that hold cuda tests, cut at the part's end; each test's
    outcome is recorded as pytest reports it."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-p", "no:cacheprovider", "-rfE", *cuda_test_files()]
    log = scratch / "pytest.log"
    t0 = time.monotonic()

    def record(code, cut: bool) -> None:
        output = log.read_text(errors="replace") if log.exists() else ""
        parsed = parse_pytest(output)
        tail = "\n".join(output.splitlines()[-60:])
        result = {"command": cmd[1:], "returncode": code, "cut": cut, "seconds": round(time.monotonic() - t0, 1)}
        result |= parsed | {
            "tail": tail + (f"\n[cut at the part's end, after {result['seconds']:.0f} s]" if cut else "")
        }
        suite.update(lambda state: state.__setitem__("cuda_tests", result))

    with log.open("wb") as sink:
        code = run_until(cmd, deadline, env=child_env(), stdout=sink, poll=lambda: record(None, False))
    record(code, code is None)
    return "tests"


def run_steptime(suite: Suite, part: Part, deadline: float, scratch: Path) -> str:
    """benchmarks/step_time.py for one model and dtype in a child (its own CUDA context, freed when it
    exits). It rewrites its JSON after every timed round; the suite takes it in as it changes, and a
    part cut at its end keeps what the last round wrote."""
    args = suite.args
    out = scratch / f"{part.name}.json"
    out.unlink(missing_ok=True)
    log = scratch / f"{part.name}.log"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--device", args.device]
    cmd += ["--models", part.model, "--dtype", part.dtype, "--json", str(out), "--methods", *part.methods]
    batch = part.batch or (args.batch if args.quick or part.model.startswith("t5") else None)
    cmd += ["--batch", str(batch)] if batch else []
    cmd += ["--seq", str(part.seq or args.seq_len)]
    cmd += ["--steps", str(args.steps), "--warmup", str(1 if args.quick else 3)]
    cmd += ["--compile", "--compile-mode", part.compile] if part.compile else []
    seen = {"mtime": None}

    def take(final: bool, code=None) -> None:
        mtime = out.stat().st_mtime_ns if out.exists() else None
        if mtime == seen["mtime"] and not final:
            return
        seen["mtime"] = mtime
        try:
            models = json.loads(out.read_text())["models"] if mtime else []
        except (ValueError, KeyError):  # written by a kill-safe replace: only when it never got that far
            models = []
        if models:
            result = models[0] | {"cut": final and code is None}
        else:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            why = "cut at the part's end before a timed round" if code is None else f"step_time.py exited {code}"
            result = {"model": part.model, "dtype": part.dtype, "error": why, "tail": tail} if final else None
        if final and code not in (0, None):
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            result = (result or {}) | {"exit": code, "tail": tail}
        if result is not None:
            suite.update(lambda state: state["step_time"].__setitem__(part.name, result))

    with log.open("wb") as sink:
        code = run_until(cmd, deadline, env=child_env(), stdout=sink, poll=lambda: take(False))
    take(True, code)
    return part.name


RUNNERS = {"memory": run_memory, "maxbatch": run_maxbatch, "tests": run_tests, "steptime": run_steptime}


def run_suite(args, runners: dict | None = None, env: dict | None = None) -> dict:
    runners = runners or RUNNERS
    parts = plan(args)  # before anything slow: a wrong --parts fails at once
    args.out_dir.mkdir(parents=True, exist_ok=True)
    start = args.started  # the budget counts from the command's start, describing the host included
    suite = Suite(args, env if env is not None else describe_environment(args.device), parts)
    print("\n".join(header(suite.state, args)), flush=True)
    print(format_plan(parts, args.budget_s), flush=True)
    suite.update()
    minimum = QUICK_MIN_WINDOW_S if args.quick else None
    with tempfile.TemporaryDirectory(prefix="gpu_suite-") as tmp:
        for part in parts:
            deadline = start + part.end_s
            window = deadline - time.time()
            needed = minimum if minimum is not None else MIN_WINDOW_S[part.kind]
            if window < needed:
                why = f"{max(window, 0):.0f} s left of its window (ends {part.end_s:.0f} s in), {needed:.0f} s needed"
                suite.update(
                    lambda state, why=why, part=part: state["skipped"].append({"part": part.name, "reason": why})
                )
                print(f"skipped {part.name}: {why}", flush=True)
                continue
            print(f"\n== {part.name}: {window:.0f} s", flush=True)
            t0 = time.monotonic()
            try:
                name = runners[part.kind](suite, part, deadline, Path(tmp))
            except Exception as err:  # one broken part costs its window, not the lease
                why = f"{type(err).__name__}: {err}"
                suite.update(
                    lambda state, why=why, part=part: state["skipped"].append({"part": part.name, "reason": why})
                )
                print(f"{part.name} failed: {why}", flush=True)
                continue
            seconds = round(time.monotonic() - t0, 1)
            suite.update(lambda state, n=name, s=seconds: state["suite"]["timings"].__setitem__(n, s))
            print("\n" + "\n".join(section(suite.state, args, name)), flush=True)
    suite.update()
    state = suite.state
    if state["skipped"]:
        print("\n## Skipped\n\n" + "\n".join(f"- {p['part']}: {p['reason']}" for p in state["skipped"]))
    print(f"\nwrote {args.out_dir}/ report.md, results.json ({state['suite']['elapsed_s']:.0f} s)", flush=True)
    return state


def run_job_file(spec_path: str, out_path: str) -> None:
    """An estimate process: one single-method job, run here (this process is its isolation), to a file."""
    from contract.spec import JobSpec
    from profiler.runner import run_job

    spec = JobSpec.model_validate_json(Path(spec_path).read_text())
    _write(Path(out_path), run_job(spec, isolate=False).model_dump_json())


def parse_args(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=Path("out/gpu_suite"))
    ap.add_argument("--budget-s", type=float, default=500, help="the whole run; each part gets its share")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a smoke run without a GPU")
    ap.add_argument("--quick", action="store_true", help="tiny models (t5-tiny, bert-tiny), batch 4, length 32")
    ap.add_argument("--parts", help="comma-separated part names (default: all, in the order of their value)")
    ap.add_argument("--plan", action="store_true", help="print the parts and their budgets, run nothing")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--steps", type=int, help="timed steps per method in the step-time parts (default 10; 2 quick)")
    ap.add_argument("--estimate-workers", type=int, default=4, help="estimate processes beside the GPU measurement")
    ap.add_argument("--gpu-jobs", type=int, default=2, help="memory parts: methods measured at once on the GPU")
    ap.add_argument("--serial", action="store_true", help="the estimate after the GPU measurement (clean timing)")
    ap.add_argument("--in-process", action="store_true", help="no child process per method (smoke runs)")
    ap.add_argument("--job", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.batch, args.seq_len = (4, 32) if args.quick else (100, 128)
    args.max_batch_upper = 64 if args.quick else 4096
    args.steps = args.steps or (2 if args.quick else 10)
    args.t0, args.started = time.monotonic(), time.time()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.job:
        return run_job_file(*args.job)
    if args.plan:
        print(format_plan(plan(args), args.budget_s))
        return
    run_suite(args)


if __name__ == "__main__":
    main()
