"""benchmarks/gpu_suite.py without a GPU: `--quick --device cpu` end to end, and the budget.

The suite is meant for a GPU lease, where a broken script costs device time; these runs catch
that here. They run it as a script, as on the host (its per-method children are spawned).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["full", "checkpointing", "lora", "wtacrs@0.3", "wtacrs@0.1", "lora+wtacrs@0.3", "lora+wtacrs@0.1"]
STEP_TIME_METHODS = ["full", "wtacrs@0.3", "lora", "lora+wtacrs@0.3", "checkpointing"]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _suite(out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "benchmarks/gpu_suite.py", "--quick", "--device", "cpu", "--out-dir", str(out), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_quick_cpu_run(tmp_path):
    parts = "tests,bert-tiny-fp32,steptime-bert-tiny-fp32,maxbatch-t5-tiny-fp32"
    proc = _suite(tmp_path, "--in-process", "--budget-s", "300", "--parts", parts, timeout=600)
    state = json.loads((tmp_path / "results.json").read_text())
    assert {"environment", "cuda_tests", "jobs", "max_batch", "comparison", "skipped"} <= set(state)
    assert state["environment"]["torch_version"] and state["environment"]["git_revision"]

    tests = state["cuda_tests"]
    assert tests["returncode"] == 0 and tests["counts"].get("skipped", 0) >= 1, tests  # no GPU here: they skip
    assert "failed" not in tests["counts"]

    name = "bert-tiny-b4-l32-fp32"
    pair = state["jobs"][name]
    assert set(pair) == {"cpu", "estimate"}
    for mode, job in pair.items():
        assert job["status"] == "succeeded", job["errors"]
        assert [r["method"] for r in job["results"]] == METHODS, mode
        assert all(r["first_step_peak_bytes"] > 0 and r["peak_bytes"] > 0 for r in job["results"])
    rows = state["comparison"][name]
    assert [r["method"] for r in rows] == METHODS
    assert all(r["first_step_peak_bytes_error_pct"] is not None for r in rows)

    # the file meant for benchmarks/gpu-reference/: the reference's shape, keyed by measured mode
    ref = json.loads((tmp_path / f"{name}-cpu.json").read_text())
    assert set(ref) == {"cpu", "estimate"} and ref["cpu"]["spec"]["batch_sizes"] == [4]
    assert ref["estimate"]["spec"]["device"] == "estimate"

    skipped = {p["part"] for p in state["skipped"]}
    if "steptime-bert-tiny-fp32" not in skipped:
        timed = state["step_time"]["steptime-bert-tiny-fp32"]
        assert "error" not in timed, timed.get("tail")
        assert list(timed["methods"]) == STEP_TIME_METHODS and timed["batch"] == 4
        assert "## step time, steptime-bert-tiny-fp32" in (tmp_path / "report.md").read_text()
    if "maxbatch-t5-tiny-fp32" not in skipped:  # a slow host may predict it past the budget
        job = state["max_batch"]["t5-tiny-l32-fp32"]
        assert [r["method"] for r in job["max_batch"]] == METHODS
        assert all(r["max_batch_size"] >= 1 for r in job["max_batch"])

    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# GPU suite: ")
    assert "## cuda-marked tests" in report and f"## {name}" in report
    assert report.count("| lora+wtacrs@0.1 |") >= 1
    assert "| method | cpu 1st-step GiB | estimate GiB | error % |" in proc.stdout


def test_budget_skips_what_would_not_fit(tmp_path):
    proc = _suite(tmp_path, "--budget-s", "1", timeout=120)
    state = json.loads((tmp_path / "results.json").read_text())
    skipped = [p["part"] for p in state["skipped"]]
    # in priority order
    assert skipped == ["tests", "t5-tiny-fp32", "bert-tiny-fp32", "steptime-bert-tiny-fp32", "maxbatch-t5-tiny-fp32"]
    assert state["jobs"] == {} and state["max_batch"] == {} and state["cuda_tests"] is None
    assert all("--budget-s" in p["reason"] for p in state["skipped"])
    assert "## Skipped" in (tmp_path / "report.md").read_text() and "## Skipped" in proc.stdout


def test_unknown_part_is_refused(tmp_path):
    cmd = [sys.executable, "benchmarks/gpu_suite.py", "--quick", "--device", "cpu", "--parts", "t5-huge-fp32"]
    proc = subprocess.run(cmd + ["--out-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown parts ['t5-huge-fp32']" in proc.stderr


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
    assert model["recompiles_timed"] == 0
    rows = model["methods"]
    assert list(rows) == STEP_TIME_METHODS
    for method, row in rows.items():
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
