import json
import subprocess
import sys
from pathlib import Path

from contract.spec import JobSpec
from profiler.runner import run_job

DATA = Path(__file__).parents[1] / "data"
CLI = [sys.executable, "-m", "app.cli"]


def test_run_minimal_spec_writes_the_contract(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        CLI + ["run", str(DATA / "minimal_spec.json"), "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["status"] == "succeeded" and result["id"] and result["spec"]["model"] == "bert-tiny"
    rows = result["results"]
    assert [(r["method"], r["batch_size"]) for r in rows] == [
        ("full", 2),
        ("full", 4),
        ("wtacrs@0.3", 2),
        ("wtacrs@0.3", 4),
    ]
    for r in rows:
        assert r["mode"] == "cpu" and r["oom"] is False
        assert r["peak_bytes"] > 0 and r["activation_bytes"] > 0 and r["tokens_per_s"] > 0
    assert "wtacrs@0.3" in proc.stdout  # the table


def test_bad_spec_exits_2_with_the_reason(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "bert-tiny", "methods": ["magic"], "seq_len": 8, "batch_sizes": [1]}))
    proc = subprocess.run(CLI + ["run", str(bad), "--out", str(tmp_path / "o.json")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "methods: Value error, method 'magic': unknown part 'magic'" in proc.stderr
    assert not (tmp_path / "o.json").exists()


def test_a_hung_method_is_killed_and_recorded():
    spec = JobSpec.model_validate({**json.loads((DATA / "minimal_spec.json").read_text()), "timeout_s": 0.5})
    result = run_job(spec, isolate=True)
    assert result.status == "failed"
    assert len(result.errors) == 2 and all("timed out after 0.5 s" in e for e in result.errors)


def test_convergence_rows_get_their_own_table(capsys):
    from contract.results import JobResult
    from profiler.cli import print_table

    row = {"method": "wtacrs@0.3", "mode": "cpu", "steps": 200, "accuracy": 0.8429, "val_loss": 0.3629}
    row |= {"peak_bytes": 474 * 2**20, "cache_bytes": 9 * 1024, "tokens_per_s": 561.0, "train_time_s": 365.0}
    print_table(JobResult(id="j1", status="succeeded", spec={}, convergence=[row]))
    out = capsys.readouterr().out
    assert "convergence" in out and "84.29" in out and "474" in out
    assert "1st-step MiB" not in out  # no empty memory table for a job that measured none


def test_compiled_rows_say_so_in_the_table(capsys):
    from contract.results import JobResult
    from profiler.cli import print_table

    base = {"batch_size": 4, "mode": "cuda", "peak_bytes": 300 * 2**20, "tokens_per_s": 9000.0}
    rows = [base | {"method": "full"}, base | {"method": "wtacrs@0.3"}]
    print_table(JobResult(id="j1", status="succeeded", spec={}, results=rows))
    assert "compiled" not in capsys.readouterr().out  # an eager job's table is as before
    compiled = [
        r | {"compiled": True, "compile_s": 41.5, "compile_graphs": 2, "compile_backend": "inductor"} for r in rows
    ]
    print_table(JobResult(id="j2", status="succeeded", spec={}, results=compiled))
    out = capsys.readouterr().out
    assert "compiled" in out and "compile s" in out and "graphs" in out and "41.5" in out
    assert "steps compiled with torch.compile (inductor)" in out
