"""benchmarks/gpu_suite.py without a GPU: the plan (value order, each part's budget), the schedule
with stand-in parts, the incremental writes (a cut step-time part keeps its timed rounds), what is
left under $OUT, the lease script, and `--quick --device cpu` end to end.

The suite is meant for a GPU lease, where a broken script costs device time; these runs catch
that here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMORY_METHODS = [
    "full", "wtacrs@0.3", "lora", "lora+wtacrs@0.3", "checkpointing", "wtacrs@0.1", "lora+wtacrs@0.1",
    "lora+checkpointing", "wtacrs@0.3+checkpointing", "lora+wtacrs@0.3+checkpointing",
]  # fmt: skip
STEP_TIME_METHODS = ["full", "wtacrs@0.3", "lora", "lora+wtacrs@0.3", "checkpointing"]
sys.path.insert(0, str(ROOT / "benchmarks"))
H200 = {"mode": "cuda", "device_name": "NVIDIA H200", "device_total_bytes": 150_000_000_000, "git_revision": "abc1234"}


def _suite(out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "benchmarks/gpu_suite.py", "--quick", "--device", "cpu", "--out-dir", str(out), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


# ---------------------------------------------------------------- the plan


def test_plan_puts_the_parts_in_the_order_of_their_value():
    import gpu_suite

    parts = gpu_suite.plan(gpu_suite.parse_args(["--budget-s", "540"]))
    names = [p.name for p in parts]
    # 1. T5-Large and T5-Base fp32 memory, every method; 2. max batch; 3. the cuda tests; 4. step time;
    # 5. bf16; 6. compiled
    assert names[:4] == ["memory-t5-large-fp32", "memory-t5-base-fp32", "maxbatch-t5-base-fp32", "tests"]
    assert names[-1] == "steptime-t5-base-fp32-compiled" and parts[-1].compile == "reduce-overhead"
    assert [p.value for p in parts] == sorted(p.value for p in parts)
    assert {p.name for p in parts if p.value == 4} == {
        "steptime-t5-base-fp32", "steptime-t5-large-fp32", "steptime-minilm-fp32",
        "steptime-t5-large-bf16", "steptime-t5-base-bf16",
    }  # fmt: skip
    assert "memory-t5-base-bf16" in names and "memory-llama-1b-bf16-weights" in names
    for p in parts[:2]:
        assert list(p.methods) == MEMORY_METHODS and p.dtype == "fp32"
    assert parts[2].methods == ("full", "wtacrs@0.3")
    assert next(p for p in parts if p.model == "minilm").batch == 32


def test_each_part_has_its_own_window_and_tests_never_the_whole_budget():
    import gpu_suite

    budget = 540.0
    parts = gpu_suite.plan(gpu_suite.parse_args(["--budget-s", str(budget)]))
    assert parts[0].start_s == 0 and parts[-1].end_s == pytest.approx(budget)
    for before, after in zip(parts, parts[1:]):
        assert after.start_s == pytest.approx(before.end_s)  # consecutive windows, in order
    window = {p.name: p.end_s - p.start_s for p in parts}
    # part 1 is worth most: most of the budget, and T5-Large's share cannot be taken by T5-Base
    assert window["memory-t5-large-fp32"] + window["memory-t5-base-fp32"] >= 0.5 * budget
    assert window["memory-t5-large-fp32"] >= 150 and window["memory-t5-base-fp32"] >= 80
    assert window["maxbatch-t5-base-fp32"] >= 60
    assert 30 <= window["tests"] <= 0.2 * budget
    assert all(window[n] >= 30 for n in ("steptime-t5-base-fp32", "steptime-t5-large-fp32"))
    # a subset is scheduled over the same budget
    subset = gpu_suite.plan(gpu_suite.parse_args(["--budget-s", "100", "--parts", "tests,steptime-minilm-fp32"]))
    assert [p.name for p in subset] == ["tests", "steptime-minilm-fp32"] and subset[-1].end_s == pytest.approx(100)


def test_plan_flag_prints_the_parts_and_runs_nothing(tmp_path):
    cmd = [sys.executable, "benchmarks/gpu_suite.py", "--plan", "--budget-s", "500", "--out-dir", str(tmp_path / "o")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("plan: 13 parts in 500 s")
    assert " 1. [1] memory-t5-large-fp32" in lines[1] and " 4. [3] tests" in lines[4]
    assert not (tmp_path / "o").exists()


def test_unknown_part_is_refused(tmp_path):
    cmd = [sys.executable, "benchmarks/gpu_suite.py", "--quick", "--device", "cpu", "--parts", "t5-huge-fp32"]
    proc = subprocess.run(cmd + ["--out-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown parts ['t5-huge-fp32']" in proc.stderr


# ---------------------------------------------------------------- the schedule, with stand-in parts


def _fake_runners(calls: list, slow: set[str], tmp: Path):
    """Stand-ins that record when they ran and write what a real part writes; a `slow` one uses its
    whole window (a real part is cut at its end)."""

    def run(suite, part, deadline, scratch):
        calls.append((part.name, time.time(), deadline))
        if part.name in slow:
            time.sleep(max(0.0, deadline - time.time()))
        if part.kind == "memory":
            name = f"{part.model}-{part.dtype}"
            row = {"method": "full", "first_step_peak_bytes": 10, "peak_bytes": 12}
            job = {"status": "succeeded", "results": [row], "errors": []}

            def change(state):
                state["jobs"][name] = {"cuda": job, "estimate": job}
                state["comparison"][name] = []

            suite.update(change)
            return name
        return part.name

    return dict.fromkeys(("memory", "maxbatch", "tests", "steptime"), run)


def _fake_suite(tmp_path, monkeypatch, budget: float, slow: set[str]):
    import gpu_suite

    monkeypatch.setattr(gpu_suite, "MIN_WINDOW_S", dict.fromkeys(gpu_suite.MIN_WINDOW_S, 0.05))
    args = gpu_suite.parse_args(["--budget-s", str(budget), "--out-dir", str(tmp_path / "out")])
    calls: list = []
    state = gpu_suite.run_suite(args, runners=_fake_runners(calls, slow, tmp_path), env=dict(H200))
    return args, calls, state


def test_a_slow_part_cannot_take_a_later_parts_window(tmp_path, monkeypatch):
    args, calls, state = _fake_suite(tmp_path, monkeypatch, 6.0, slow={"memory-t5-large-fp32"})
    parts = {p["name"]: p for p in state["plan"]}
    names = [c[0] for c in calls]
    assert names == [p["name"] for p in state["plan"]] and not state["skipped"]  # every part ran, in order
    for name, _, deadline in calls:  # each part's deadline is its own window's end
        assert deadline == pytest.approx(args.started + parts[name]["end_s"], abs=0.06), name  # end_s: 0.1 s
    # T5-Large used all of its window; T5-Base still started at the start of its own, with all of it
    ((_, started, _),) = [c for c in calls if c[0] == "memory-t5-base-fp32"]
    assert started - args.started == pytest.approx(parts["memory-t5-base-fp32"]["start_s"], abs=0.3)


def test_time_an_early_part_leaves_goes_to_the_next(tmp_path, monkeypatch):
    args, calls, state = _fake_suite(tmp_path, monkeypatch, 6.0, slow=set())
    ((_, started, deadline),) = [c for c in calls if c[0] == "memory-t5-base-fp32"]
    parts = {p["name"]: p for p in state["plan"]}
    window = parts["memory-t5-base-fp32"]["end_s"] - parts["memory-t5-base-fp32"]["start_s"]
    assert deadline - started > window + 1.0  # T5-Large's unused time on top of its own window


def test_out_dir_holds_at_most_eight_files_no_folder(tmp_path, monkeypatch):
    import gpu_suite

    args, _, state = _fake_suite(tmp_path, monkeypatch, 2.0, slow=set())
    files = _files(args.out_dir)
    assert all(p.parent == args.out_dir for p in files)  # no folder under it: 1 deep, within the 2 allowed
    names = {p.name for p in files}
    memory = [p for p in state["plan"] if p["kind"] == "memory"]
    assert names == {"results.json", "report.md"} | {f"{p['model']}-{p['dtype']}-h200.json" for p in memory}
    # the lease script's log is the only other file under $OUT
    assert len(files) <= gpu_suite.MAX_OUT_FILES == 7
    saved = json.loads((args.out_dir / "results.json").read_text())
    assert saved["suite"]["reference_files"] and saved["environment"]["git_revision"] == "abc1234"
    assert [p["name"] for p in saved["plan"]] == [p["name"] for p in state["plan"]]


def test_a_part_that_raises_costs_only_its_window(tmp_path, monkeypatch):
    import gpu_suite

    monkeypatch.setattr(gpu_suite, "MIN_WINDOW_S", dict.fromkeys(gpu_suite.MIN_WINDOW_S, 0.05))
    calls = []

    def broken(suite, part, deadline, scratch):
        calls.append(part.name)
        raise RuntimeError("CUDA error: an illegal memory access")

    runners = dict.fromkeys(("memory", "maxbatch", "tests", "steptime"), broken)
    args = gpu_suite.parse_args(
        ["--budget-s", "2", "--out-dir", str(tmp_path), "--parts", "tests,maxbatch-t5-base-fp32"]
    )
    state = gpu_suite.run_suite(args, runners=runners, env=dict(H200))
    assert calls == ["maxbatch-t5-base-fp32", "tests"]
    assert [s["part"] for s in state["skipped"]] == calls and "illegal memory access" in state["skipped"][0]["reason"]


def test_budget_skips_what_would_not_fit(tmp_path):
    proc = _suite(tmp_path, "--budget-s", "1", timeout=120)
    state = json.loads((tmp_path / "results.json").read_text())
    skipped = [p["part"] for p in state["skipped"]]
    assert skipped == [p["name"] for p in state["plan"]]  # in the order of their value
    assert state["jobs"] == {} and state["max_batch"] == {} and state["cuda_tests"] is None
    assert all("needed" in p["reason"] for p in state["skipped"])
    assert "## Skipped" in (tmp_path / "report.md").read_text() and "## Skipped" in proc.stdout


# ---------------------------------------------------------------- the pieces


def test_run_until_kills_the_whole_group_at_the_deadline(tmp_path):
    import gpu_suite

    pid_file = tmp_path / "child.pid"
    code = f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)"  # noqa: E501
    t0 = time.time()
    polls = []
    assert (
        gpu_suite.run_until([sys.executable, "-c", code], t0 + 2.0, env=dict(os.environ), poll=lambda: polls.append(1))
        is None
    )
    assert time.time() - t0 < 10 and polls
    child = Path(f"/proc/{pid_file.read_text()}/status")
    time.sleep(0.2)
    # the grandchild went with it (gone, or a zombie where nothing reaps orphans)
    assert not child.exists() or "State:\tZ" in child.read_text()
    assert gpu_suite.run_until([sys.executable, "-c", "pass"], time.time() + 30, env=dict(os.environ)) == 0


def test_pytest_output_is_read_per_test_even_when_cut():
    import gpu_suite

    output = "\n".join(
        [
            "collected 40 items / 12 deselected / 28 selected",
            "tests/wtacrs/test_kernels.py::test_cuda_bit_ops_match_reference[dtype0] PASSED [  3%]",
            "tests/wtacrs/test_kernels.py::test_cuda_sample_rows_matches_reference[wta-dtype0] FAILED [  7%]",
            "tests/wtacrs/test_dispatch.py::test_direct_route_on_cuda SKIPPED (needs a CUDA device) [ 10%]",
        ]
    )
    parsed = gpu_suite.parse_pytest(output)
    assert parsed["counts"] == {"passed": 1, "failed": 1, "skipped": 1} and parsed["selected"] == 28
    assert (
        parsed["outcomes"]["tests/wtacrs/test_kernels.py::test_cuda_sample_rows_matches_reference[wta-dtype0]"]
        == "failed"
    )
    files = gpu_suite.cuda_test_files()
    assert files[0] == "tests/wtacrs/test_kernels.py" and "tests/profiler/test_measure.py" in files


def test_max_batch_checks_fit_oom_and_same_twice():
    import gpu_suite

    def job(b, probes):
        row = {"method": "full", "max_batch_size": b, "probes": [{"batch_size": s, "fits": f} for s, f in probes]}
        return {"max_batch": [row]}

    good = job(412, [(1, True), (64, True), (412, True), (413, False)])
    checks = gpu_suite.maxbatch_checks([good, good])
    assert checks["full"] == {"answers": [412, 412], "exact": [True, True], "same": True}
    loose = job(411, [(1, True), (411, True), (413, False)])  # 412 never probed: not shown exact
    checks = gpu_suite.maxbatch_checks([good, loose])
    assert checks["full"]["exact"] == [True, False] and not checks["full"]["same"]
    assert not gpu_suite.maxbatch_checks([good])["full"]["same"]  # one search says nothing about twice


def test_merge_jobs_marks_what_a_cut_left_out():
    import gpu_suite

    spec = gpu_suite.make_spec(
        {"model": "bert-tiny", "methods": ["full", "lora", "wtacrs@0.3"], "seq_len": 8, "batch_sizes": [2],
         "device": "cpu", "measurements": ["peak_memory"]}
    )  # fmt: skip
    one = {"spec": {"methods": ["full"]}, "results": [{"method": "full"}], "errors": []}
    killed = {"status": "cancelled", "spec": {"methods": ["lora"]}, "results": [], "errors": []}
    merged = gpu_suite.merge_jobs(spec, [one, killed], cut=True)
    assert merged["status"] == "cancelled" and merged["not_run"] == ["lora", "wtacrs@0.3"]
    assert [r["method"] for r in merged["results"]] == ["full"]
    assert gpu_suite.merge_jobs(spec, [one], cut=False)["status"] == "succeeded"


def test_lease_script_fits_one_command_and_leaves_few_files(tmp_path):
    script = (ROOT / "benchmarks" / "gpu_lease.sh").read_text()
    assert len(script) < 2000  # paste-able as one device command
    out = tmp_path / "out"
    env = os.environ | {"OUT": str(out), "SITE": str(tmp_path / "site"), "PYTHON": sys.executable}
    cmd = ["bash", "benchmarks/gpu_lease.sh", "--plan", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "torch" in proc.stdout and "device" in proc.stdout and "suite budget:" in proc.stdout
    assert "1. [1] memory-t5-large-fp32" in proc.stdout
    assert [p.name for p in _files(out)] == ["lease.log"]
    assert "suite budget:" in (out / "lease.log").read_text()


# ---------------------------------------------------------------- step time, incremental


def _wait_for(path: Path, ready, timeout: float) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        if path.exists():
            data = json.loads(path.read_text())  # written by replace: never half a file
            if ready(data):
                return data
        time.sleep(0.2)
    raise AssertionError(f"{path} not ready in {timeout} s")


@pytest.mark.slow  # test_a_cut_step_time_part_keeps_its_timed_methods covers it through the suite
def test_step_time_json_keeps_timed_rounds_when_killed(tmp_path):
    out = tmp_path / "st.json"
    cmd = [sys.executable, "benchmarks/step_time.py", "--device", "cpu", "--models", "bert-tiny", "--batch", "2"]
    cmd += ["--seq", "16", "--steps", "100000", "--warmup", "1", "--json", str(out), "--methods", "full", "wtacrs@0.3"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(out, lambda d: d["models"] and d["models"][0]["rounds_timed"] >= 2, timeout=240)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (model,) = json.loads(out.read_text())["models"]
    assert not model["complete"] and model["rounds_timed"] >= 2
    for method in ("full", "wtacrs@0.3"):
        row = model["methods"][method]
        assert len(row["times_s"]) == model["rounds_timed"], method
        assert row["min_s"] <= row["median_s"] <= row["max_s"]
    assert model["methods"]["wtacrs@0.3"]["x_full"] > 0


def test_a_cut_step_time_part_keeps_its_timed_methods(tmp_path, monkeypatch):
    """The suite's step-time part, cut at its end: the rounds step_time.py had written are in
    results.json and report.md, marked as cut."""
    import gpu_suite

    monkeypatch.setattr(gpu_suite, "QUICK_MIN_WINDOW_S", 1.0)
    args = gpu_suite.parse_args(
        ["--quick", "--device", "cpu", "--parts", "steptime-bert-tiny-fp32", "--steps", "100000",
         "--budget-s", "45", "--out-dir", str(tmp_path)]
    )  # fmt: skip
    state = gpu_suite.run_suite(args, env={"mode": "cpu", "device_name": "cpu"})
    result = state["step_time"]["steptime-bert-tiny-fp32"]
    assert "error" not in result, result.get("tail")
    assert result["cut"] and not result["complete"] and result["rounds_timed"] >= 1
    assert list(result["methods"]) == ["full", "wtacrs@0.3", "lora", "lora+wtacrs@0.3"]
    assert all(len(r["times_s"]) >= 1 for r in result["methods"].values())
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["step_time"]["steptime-bert-tiny-fp32"]["rounds_timed"] == result["rounds_timed"]
    assert "cut at the part's end" in (tmp_path / "report.md").read_text()
    assert time.monotonic() - args.t0 < 60  # cut at the budget, not run to 100000 steps


# ---------------------------------------------------------------- end to end, tiny models


@pytest.mark.slow
def test_quick_cpu_run(tmp_path):
    parts = "memory-bert-tiny-fp32,maxbatch-t5-tiny-fp32,tests,steptime-bert-tiny-fp32"
    proc = _suite(tmp_path, "--in-process", "--budget-s", "500", "--parts", parts, timeout=700)
    state = json.loads((tmp_path / "results.json").read_text())
    assert {"environment", "cuda_tests", "jobs", "max_batch", "comparison", "skipped", "plan"} <= set(state)
    assert state["environment"]["torch_version"] and state["environment"]["git_revision"]
    assert not state["skipped"], state["skipped"]

    tests = state["cuda_tests"]
    assert tests["returncode"] == 0 and tests["counts"].get("skipped", 0) >= 1, tests  # no GPU here: they skip
    assert "failed" not in tests["counts"] and not tests["cut"]

    name = "bert-tiny-b4-l32-fp32"
    pair = state["jobs"][name]
    assert set(pair) == {"cpu", "estimate"}
    for mode, job in pair.items():
        assert job["status"] == "succeeded", job["errors"]
        assert sorted(r["method"] for r in job["results"]) == sorted(MEMORY_METHODS), mode
        assert all(r["first_step_peak_bytes"] > 0 and r["peak_bytes"] > 0 for r in job["results"])
    rows = state["comparison"][name]
    assert [r["method"] for r in rows] == MEMORY_METHODS  # the measured order: the spec's, one at a time
    assert all(r["first_step_peak_bytes_error_pct"] is not None for r in rows)

    # the file meant for benchmarks/gpu-reference/: the reference's shape, keyed by measured mode
    ref = json.loads((tmp_path / f"{name}-cpu.json").read_text())
    assert set(ref) == {"cpu", "estimate"} and ref["cpu"]["spec"]["batch_sizes"] == [4]
    assert ref["estimate"]["spec"]["device"] == "estimate"

    timed = state["step_time"]["steptime-bert-tiny-fp32"]
    assert "error" not in timed, timed.get("tail")
    assert list(timed["methods"]) == ["full", "wtacrs@0.3", "lora", "lora+wtacrs@0.3"] and timed["batch"] == 4
    assert timed["complete"] and not timed["cut"]

    entry = state["max_batch"]["t5-tiny-l32-fp32"]
    assert len(entry["runs"]) == 2
    for method in ("full", "wtacrs@0.3"):
        check = entry["checks"][method]
        assert check["same"] and all(check["exact"]) and check["answers"][0] >= 1, check

    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# GPU suite: ")
    assert "## cuda-marked tests" in report and f"## {name}" in report and "## max batch, t5-tiny" in report
    assert report.count("| lora+wtacrs@0.3+checkpointing |") >= 1
    assert "| method | cpu 1st-step GiB | estimate GiB | error % |" in proc.stdout
    assert len(_files(tmp_path)) <= 7


@pytest.mark.slow
def test_memory_part_with_child_processes(tmp_path):
    """The lease's path: each method measured in its own child, two at a time, the estimates in
    processes beside them, every method of both modes in the setting's file."""
    _suite(tmp_path, "--budget-s", "400", "--parts", "memory-t5-tiny-fp32", timeout=600)
    state = json.loads((tmp_path / "results.json").read_text())
    pair = json.loads((tmp_path / "t5-tiny-b4-l32-fp32-cpu.json").read_text())
    assert pair == state["jobs"]["t5-tiny-b4-l32-fp32"]
    for mode, job in pair.items():
        assert job["status"] == "succeeded" and not job["not_run"], (mode, job["errors"])
        assert sorted(r["method"] for r in job["results"]) == sorted(MEMORY_METHODS[:4]), mode


def test_step_time_runs_methods_side_by_side(tmp_path):
    """benchmarks/step_time.py on a tiny model: every method timed in the same rounds, the ratios
    to full and to lora, and the JSON it writes."""
    import step_time

    out = tmp_path / "step_time.json"
    args = ["--device", "cpu", "--models", "bert-tiny", "--batch", "2", "--seq", "16"]
    result = step_time.main(args + ["--steps", "2", "--warmup", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    (model,) = result["models"]
    assert model["preset"] == "bert-tiny" and model["batch"] == 2 and not model["compiled"]
    assert model["recompiles_timed"] == 0 and model["complete"] and model["rounds_timed"] == 2
    rows = model["methods"]
    assert list(rows) == STEP_TIME_METHODS
    for method, row in rows.items():
        assert "times_s" in row, (method, row)
        assert len(row["times_s"]) == 2 and row["min_s"] <= row["median_s"] <= row["max_s"], method
        assert row["x_full"] == pytest.approx(row["median_s"] / rows["full"]["median_s"])
    assert rows["full"]["x_full"] == 1.0 and rows["lora"]["x_lora"] == 1.0
    assert "x_lora" in rows["lora+wtacrs@0.3"] and "x_lora" not in rows["wtacrs@0.3"]
    assert model["bars"] == []  # no bar is set on bert-tiny


def test_step_time_bars_are_checked_only_in_their_setting():
    import step_time

    def result(batch, ratio):
        rows = {"full": {"x_full": 1.0}, "wtacrs@0.3": {"x_full": ratio}}
        return {"model": "bert-base", "device": "cpu", "dtype": "fp32", "batch": batch, "seq": 128, "methods": rows}

    assert [b["status"] for b in step_time.check_bars(result(8, 0.85))] == ["met"]
    assert [b["status"] for b in step_time.check_bars(result(8, 0.95))] == ["missed"]
    assert step_time.check_bars(result(4, 0.85))[0]["status"].startswith("not checked: the bar is set at batch 8")
    gpu = {**result(100, 1.0), "model": "t5-large", "device": "cuda"}
    assert {(b["method"], b["limit"]) for b in step_time.check_bars(gpu)} == {
        ("wtacrs@0.3", 1.0),
        ("lora+wtacrs@0.3", 1.15),
    }


@pytest.mark.slow
def test_step_time_compiled(tmp_path, monkeypatch):
    """--compile: each method's model compiled side by side (aot_eager here), compile time reported."""
    import step_time

    monkeypatch.setenv("WTACRS_COMPILE_BACKEND", "aot_eager")
    args = ["--device", "cpu", "--models", "llama-tiny", "--batch", "2", "--seq", "16", "--compile"]
    result = step_time.main(args + ["--methods", "full", "wtacrs@0.3", "--steps", "2", "--warmup", "1"])
    (model,) = result["models"]
    assert model["compiled"] and model["recompiles_timed"] == 0  # the timed steps ran what warm-up compiled
    for row in model["methods"].values():
        assert "error" not in row and row["compiled"] and row["compile_s"] > 0 and row["compile_graphs"] >= 1
