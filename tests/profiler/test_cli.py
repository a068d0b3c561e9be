import json
import re
import subprocess
import sys
import webbrowser
from pathlib import Path

import pytest

from profiler.runner import run_job
from profiler.spec import JobSpec

DATA = Path(__file__).parents[1] / "data"
CLI = [sys.executable, "-m", "profiler.cli"]


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
    assert result["status"] == "failed"
    assert len(result["errors"]) == 2 and all("timed out after 0.5 s" in e for e in result["errors"])


def test_convergence_rows_get_their_own_table(capsys):
    from profiler.cli import print_table

    row = {"method": "wtacrs@0.3", "steps": 200, "accuracy": 0.8429, "val_loss": 0.3629, "peak_bytes": 474 * 2**20}
    row |= {"cache_bytes": 9 * 1024, "tokens_per_s": 561.0, "train_time_s": 365.0}
    print_table({"id": "j1", "status": "succeeded", "results": [], "max_batch": [], "errors": [], "convergence": [row]})
    out = capsys.readouterr().out
    assert "convergence" in out and "84.29" in out and "474" in out
    assert "1st-step MiB" not in out  # no empty memory table for a job that measured none


def test_help_shows_flags_without_a_value():
    """typer's rich help printed `--help <bool>`, as if it took a value."""
    from typer.testing import CliRunner

    from profiler.cli import app

    runner = CliRunner()
    top = runner.invoke(app, ["--help"]).output
    serve = runner.invoke(app, ["serve", "--help"]).output
    assert "<bool>" not in top + serve
    assert re.search(r"^  --help +Show this message and exit\.$", top, re.M), top
    assert re.search(r"^  --open / --no-open +open the browser once up", serve, re.M), serve
    assert re.search(r"^  --port <int> +port to bind", serve, re.M), serve


@pytest.mark.parametrize("outcome", [False, webbrowser.Error("no runnable browser")])
def test_open_says_so_when_no_browser_can_be_opened(monkeypatch, capsys, outcome):
    from profiler.cli import open_browser

    def fake_open(url):
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(webbrowser, "open", fake_open)
    assert open_browser("http://127.0.0.1:8000/") is False
    err = capsys.readouterr().err
    assert "no browser could be opened on this machine; visit http://127.0.0.1:8000/ yourself" in err


def test_open_is_quiet_when_a_browser_opens(monkeypatch, capsys):
    from profiler.cli import open_browser

    monkeypatch.setattr(webbrowser, "open", lambda url: True)
    assert open_browser("http://127.0.0.1:8000/") is True and capsys.readouterr().err == ""
