"""Everything worth a GPU lease in one command, most important first, inside a time budget.

1. the `cuda`-marked tests (pytest -m cuda, in a subprocess);
2. the paper's Table 2 setting (batch 100, length 128, every method) measured on the GPU and
   estimated (FakeTensorMode, cuda-sm90 kernels) side by side, with the estimate's error;
3. step time at equal batch, every method side by side (benchmarks/step_time.py, in a
   subprocess), against the issue's bars: T5-Large fp32/bf16 and T5-Base at batch 100, MiniLM-L6
   at batch 32; then T5-Base compiled (torch.compile);
4. the exact largest batch per method on the GPU.

Order: tests, t5-base fp32, t5-large fp32, t5-base bf16, t5-large bf16, step time t5-large fp32,
t5-large bf16, t5-base fp32, minilm fp32, max batch t5-base fp32, t5-large fp32, step time t5-base
fp32 compiled. A part whose predicted time does not fit in what is left of --budget-s is skipped
(the report says so) and later, cheaper parts still run; a running part is cut at the budget.
`--parts` picks parts by name, so a second run can take what the first skipped.

Writes `report.md`, `results.json` ({"environment", "cuda_tests", "jobs": {name: {"cuda": job,
"estimate": job}}, "max_batch", "comparison", "step_time": {name: step_time.py's model result},
"skipped"}) and one `<model>-b100-l128-<dtype>-<gpu>.json`
per setting, shaped like ../shared/gpu-reference/*.json: copy one to benchmarks/gpu-reference/ and
tests/profiler/test_estimate_vs_gpu.py checks the estimate against it. Both files are rewritten
after every part, so a run killed at its limit still leaves what it finished.

On the GPU host (torch 2.11, transformers 5.17, peft, pytest; no pydantic, no package index).
On a dev machine, in the repo root (.wheels/ is git-ignored; pydantic 2.14 needs typing-extensions
>= 4.16, newer than the host may have, so it travels too):

  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .wheels/gpu-host \
    pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0

Carry .wheels/gpu-host with the checkout (the device tool: carry [".wheels"]), then on the host:

  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .wheels/gpu-host/*.whl
  PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --out-dir "${OUT:-out/gpu_suite}"

Smoke run without a GPU: `PYTHONPATH=. .venv/bin/python benchmarks/gpu_suite.py --quick --device cpu
--in-process` (tiny models, `cpu` mode in place of `cuda`; the cuda tests run and skip).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.spec import JobSpec  # noqa: E402
from profiler.runner import run_job  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_report import compare, header, render, section  # noqa: E402

METHODS = ["full", "checkpointing", "lora", "wtacrs@0.3", "wtacrs@0.1", "lora+wtacrs@0.3", "lora+wtacrs@0.1"]
GIB = 2**30
# a part's cost relative to the first setting: the per-method child start is fixed, model build,
# steps and trace grow with the layers (t5-large has twice t5-base's); max batch probes ~5 steps
SIZE = {"t5-large": 2.2}
MAXBATCH_FACTOR = 2.0
# seconds per unit until something was timed: an H100 ran t5-base fp32 in about 112 s (cuda) and
# 132 s (estimate) one after the other (../shared/gpu-reference/README.md); side by side, ~150 s
FIRST_GUESS, QUICK_GUESS, TESTS_GUESS = 150.0, 60.0, 60.0
# step time: every method built at once, 3 warm-up and 10 timed steps each; compiling costs more
STEPTIME_WEIGHT = {"t5-large": 0.8, "t5-base": 0.4, "minilm": 0.2, "bert-tiny": 0.5}
COMPILE_FACTOR = 3.0


@dataclass
class Part:
    name: str
    kind: str  # "tests", "setting", "steptime" or "maxbatch"
    model: str = ""
    dtype: str = "fp32"
    weight: float = 1.0
    compile: bool = False


def plan(args) -> list[Part]:
    models, dtypes = (["t5-tiny", "bert-tiny"], ["fp32"]) if args.quick else (["t5-base", "t5-large"], ["fp32", "bf16"])
    parts = [Part("tests", "tests")]
    parts += [Part(f"{m}-{d}", "setting", m, d, SIZE.get(m, 1.0)) for d in dtypes for m in models]
    timed = [("bert-tiny", "fp32")] if args.quick else [("t5-large", "fp32"), ("t5-large", "bf16")]
    timed += [] if args.quick else [("t5-base", "fp32"), ("minilm", "fp32")]
    parts += [Part(f"steptime-{m}-{d}", "steptime", m, d, STEPTIME_WEIGHT[m]) for m, d in timed]
    parts += [
        Part(f"maxbatch-{m}-fp32", "maxbatch", m, "fp32", MAXBATCH_FACTOR * SIZE.get(m, 1.0))
        for m in models[: 1 if args.quick else 2]
    ]
    if not args.quick:
        weight = COMPILE_FACTOR * STEPTIME_WEIGHT["t5-base"]
        parts.append(Part("steptime-t5-base-fp32-compile", "steptime", "t5-base", "fp32", weight, compile=True))
    if args.parts:
        wanted = args.parts.split(",")
        unknown = sorted(set(wanted) - {p.name for p in parts})
        if unknown:
            sys.exit(f"unknown parts {unknown}; known: {[p.name for p in parts]}")
        parts = [p for p in parts if p.name in wanted]
    return [p for p in parts if not (p.kind == "tests" and args.skip_tests)]


def make_spec(fields: dict) -> JobSpec:
    if "estimate_device" not in JobSpec.model_fields:  # a spec.py from before the sm90 estimate
        fields = {k: v for k, v in fields.items() if k != "estimate_device"}
    return JobSpec.model_validate(fields)


def table2_specs(args, part: Part, total_gib: float) -> tuple[JobSpec, JobSpec]:
    base = {"model": part.model, "methods": METHODS, "seq_len": args.seq_len, "batch_sizes": [args.batch]}
    base["dtype"] = part.dtype
    measured = make_spec(
        base | {"device": args.device, "measurements": ["peak_memory", "throughput"], "steps": 3, "warmup": 1}
    )
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


def maxbatch_spec(args, part: Part) -> JobSpec:
    fields = {"model": part.model, "methods": METHODS, "seq_len": args.seq_len, "dtype": part.dtype}
    fields |= {"device": args.device, "measurements": ["max_batch_size"], "max_batch": {"upper": args.max_batch_upper}}
    if args.device == "cpu":  # host memory has no hard limit to probe against: a small one for the smoke run
        fields["target_memory_gb"] = 1.0
    return make_spec(fields)


def child_env(**extra: str) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return os.environ | {"PYTHONPATH": path} | extra


def describe_environment(device: str) -> dict:
    """In a child for cuda: a CUDA context in this process would hold GPU memory the whole run,
    lowering every max batch found after it."""
    code = "import json, sys; from profiler.environment import describe; print(json.dumps(describe(sys.argv[1])))"
    out = subprocess.run([sys.executable, "-c", code, device], capture_output=True, text=True, env=child_env())
    if out.returncode:
        sys.exit(f"could not describe the {device} environment:\n{out.stderr[-2000:]}")
    env = json.loads(out.stdout.strip().splitlines()[-1])
    if device == "cuda" and "cuda_version" not in env:
        sys.exit("torch sees no CUDA device here; use --device cpu for a smoke run")
    return env


def gpu_tag(env: dict) -> str:
    found = re.search(r"\b([A-Z]\d{2,4})\b", env.get("device_name", "")) if env.get("mode") == "cuda" else None
    return found.group(1).lower() if found else env.get("mode", "cpu")


def run_cuda_tests(timeout: float) -> dict:
    # only the files that hold cuda tests: the GPU host lacks fastapi/sqlalchemy, and collecting
    # tests/app there would turn the run into collection errors
    files = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if "mark.cuda" in p.read_text()
    )
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *files]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=child_env())
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:  # its output comes as bytes, text=True or not
        output = b"".join(x or b"" for x in (err.stdout, err.stderr)).decode(errors="replace")
        output, code = output + f"\n[killed after {timeout:.0f} s]", None
    counts: dict[str, int] = {}
    summary = next(
        (ln for ln in reversed(output.splitlines()) if re.search(r"\d+ (passed|failed|skipped|error)", ln)), ""
    )
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|deselected|xfailed|xpassed|errors?|warnings?)", summary):
        counts[what.rstrip("s") + "s" if what.startswith(("error", "warning")) else what] = int(n)
    result = {"command": cmd, "returncode": code, "counts": counts, "seconds": round(time.monotonic() - t0, 1)}
    return result | {"tail": "\n".join(output.splitlines()[-40:])}


def run_step_time(args, part: Part, timeout: float) -> dict:
    """benchmarks/step_time.py for one model and dtype, in a child (its own CUDA context, freed when
    it exits); its result for the model, or {"error": ...} with the end of its output."""
    out = args.out_dir / f"{part.name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--device", args.device]
    cmd += ["--models", part.model, "--dtype", part.dtype, "--json", str(out)]
    cmd += (
        ["--batch", str(args.batch), "--seq", str(args.seq_len), "--steps", "2", "--warmup", "1"] if args.quick else []
    )
    cmd += ["--compile"] if part.compile else []
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout, 1), env=child_env())
        tail, code = (proc.stdout + proc.stderr)[-3000:], proc.returncode
    except subprocess.TimeoutExpired:
        tail, code = f"killed after {timeout:.0f} s", None
    if code == 0 and out.exists():
        return json.loads(out.read_text())["models"][0]
    return {"model": part.model, "dtype": part.dtype, "error": f"step_time.py exited {code}", "tail": tail}


def placeholder(spec: JobSpec, why: str) -> dict:
    return {"status": "failed", "spec": spec.model_dump(mode="json"), "results": [], "max_batch": [], "errors": [why]}


def run_pair(args, name: str, measured: JobSpec, estimate: JobSpec, deadline: float) -> tuple[dict, dict]:
    def cancel() -> bool:
        return time.time() > deadline

    def progress(done: int, total: int, message: str) -> None:
        print(f"  [{name} {args.device}] {done}/{total} {message}", file=sys.stderr, flush=True)

    if args.device != "cuda" or args.in_process or args.serial:
        isolate = not args.in_process
        cuda = run_job(measured, progress=progress, isolate=isolate, should_cancel=cancel).model_dump(mode="json")
        return cuda, run_job(estimate, isolate=isolate, should_cancel=cancel).model_dump(mode="json")
    # The trace runs on the CPU beside the GPU measurement, halving the wall time. In its own
    # process with CUDA hidden (a laptop's view, and no context taking GPU memory) and a quarter
    # of the cores, so the measured steps keep the host's launch throughput.
    tmp = Path(tempfile.mkdtemp(prefix="gpu_suite-"))
    threads = str(max(1, (os.cpu_count() or 4) // 4))
    spec_path, out = tmp / "spec.json", tmp / "result.json"
    cmd = [sys.executable, __file__, "--job", str(spec_path), str(out), "--deadline", str(deadline)]
    spec_path.write_text(estimate.model_dump_json())
    proc = subprocess.Popen(cmd, env=child_env(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=threads))
    cuda = run_job(measured, progress=progress, should_cancel=cancel).model_dump(mode="json")
    try:
        proc.wait(timeout=max(deadline - time.time(), 0) + 60)  # it cancels itself at the deadline
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if out.exists():
        return cuda, json.loads(out.read_text())
    return cuda, placeholder(estimate, f"estimate process exited {proc.returncode}")


def save(state: dict, args) -> None:
    state["suite"]["elapsed_s"] = round(time.monotonic() - args.t0, 1)
    (args.out_dir / "results.json").write_text(json.dumps(state, indent=1))
    (args.out_dir / "report.md").write_text(render(state, args))


def run_suite(args) -> dict:
    parts = plan(args)  # before anything slow: a wrong --parts fails at once
    args.out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget_s
    env = describe_environment(args.device)
    target_gib = (env.get("device_total_bytes") or 80 * GIB) / GIB
    tag = gpu_tag(env)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    suite = {"argv": sys.argv, "date": date, "budget_s": args.budget_s, "gpu_tag": tag, "target_gib": target_gib}
    suite |= {"estimate_device": "cuda-sm90" if args.device == "cuda" else "cpu", "timings": {}, "reference_files": {}}
    suite["elapsed_s"] = 0.0
    state = {"environment": env, "suite": suite, "cuda_tests": None, "jobs": {}, "max_batch": {}}
    state |= {"comparison": {}, "step_time": {}, "skipped": []}
    print("\n".join(header(state, args)), flush=True)
    unit = QUICK_GUESS if args.quick else FIRST_GUESS
    for part in parts:
        left = deadline - time.time()
        predicted = TESTS_GUESS if part.kind == "tests" else part.weight * unit
        if predicted > left:
            why = f"predicted ~{predicted:.0f} s, {max(left, 0):.0f} s left of --budget-s {args.budget_s:g}"
            state["skipped"].append({"part": part.name, "reason": why})
            print(f"skipped {part.name}: {why}", flush=True)
            continue
        t0 = time.monotonic()
        name = "tests"
        if part.kind == "tests":
            state["cuda_tests"] = run_cuda_tests(timeout=left)
        elif part.kind == "setting":
            name = f"{part.model}-b{args.batch}-l{args.seq_len}-{part.dtype}"
            measured, estimate = table2_specs(args, part, target_gib)
            cuda, est = run_pair(args, name, measured, estimate, deadline)
            state["jobs"][name] = {args.device: cuda, "estimate": est}
            state["comparison"][name] = compare(cuda, est)
            if any(not r.get("error") and not r.get("oom") for r in cuda["results"]):
                path = args.out_dir / f"{name}-{tag}.json"
                path.write_text(json.dumps({args.device: cuda, "estimate": est}, indent=1))
                suite["reference_files"][name] = path.name
        elif part.kind == "steptime":
            name = part.name
            state["step_time"][name] = run_step_time(args, part, timeout=left)
        else:
            name = f"{part.model}-l{args.seq_len}-{part.dtype}"
            spec = maxbatch_spec(args, part)
            state["max_batch"][name] = run_job(
                spec, isolate=not args.in_process, should_cancel=lambda: time.time() > deadline
            ).model_dump(mode="json")
        seconds = time.monotonic() - t0
        suite["timings"][name] = round(seconds, 1)
        if part.kind != "tests":
            unit = seconds / part.weight  # the latest timing is the best guess for this host
        save(state, args)
        print("\n" + "\n".join(section(state, args, name)), flush=True)
    save(state, args)
    if state["skipped"]:
        print("\n## Skipped\n\n" + "\n".join(f"- {p['part']}: {p['reason']}" for p in state["skipped"]))
    print(f"\nwrote {args.out_dir / 'report.md'} and results.json ({suite['elapsed_s']:.0f} s)", flush=True)
    return state


def run_job_file(spec_path: str, out_path: str, deadline: float) -> None:
    """The parallel estimate's process: one job, written to a file."""
    spec = JobSpec.model_validate_json(Path(spec_path).read_text())
    result = run_job(spec, should_cancel=lambda: time.time() > deadline)
    Path(out_path).write_text(result.model_dump_json())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=Path("out/gpu_suite"))
    ap.add_argument("--budget-s", type=float, default=500, help="skip parts that would not finish in this time")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a smoke run without a GPU")
    ap.add_argument("--quick", action="store_true", help="tiny models (t5-tiny, bert-tiny), fp32, batch 4, length 32")
    ap.add_argument("--parts", help="comma-separated part names (default: all, in priority order)")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--serial", action="store_true", help="no estimate beside the GPU measurement (clean timing)")
    ap.add_argument("--in-process", action="store_true", help="no child process per method (smoke runs)")
    ap.add_argument("--job", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        return run_job_file(*args.job, args.deadline)
    args.batch, args.seq_len = (4, 32) if args.quick else (100, 128)
    args.max_batch_upper = 64 if args.quick else 4096
    args.t0 = time.monotonic()
    run_suite(args)


if __name__ == "__main__":
    main()
