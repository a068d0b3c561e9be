"""The server and workers as real processes, over HTTP, on SQLite."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.app.live_server import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
MINIMAL = ROOT / "tests" / "data" / "minimal_spec.json"
TOKEN = "e2e-admin"


def start(args, tmp_path, name, **env):
    log = open(tmp_path / f"{name}.log", "w")
    full_env = {**os.environ, "WTACRS_ADMIN_TOKEN": TOKEN, "WTACRS_TOKEN": TOKEN, **env}
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args], cwd=tmp_path, env=full_env, stdout=log, stderr=subprocess.STDOUT
    )


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def job_status(url, job_id):
    return httpx.get(f"{url}/api/jobs/{job_id}", timeout=10).json()


@pytest.fixture
def server(tmp_path):
    procs = []

    def launch(worker=True, extra=(), **env):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args = ["serve", "--port", str(port), "--db", f"sqlite:///{tmp_path}/e2e.db", *extra] + (
            [] if worker else ["--no-worker"]
        )
        procs.append(start(args, tmp_path, "server", **env))

        def healthy():
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, 60, "the server to answer /healthz")
        return url

    yield launch, procs
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def test_serve_open_says_where_to_look_when_no_browser_opens(server, tmp_path):
    """The README's first command: `serve --open` on a machine whose browser cannot open."""
    launch, _ = server
    launch(worker=False, extra=["--open"], BROWSER="false")  # webbrowser runs `false`: it fails
    log = tmp_path / "server.log"
    wait_for(lambda: "no browser could be opened" in log.read_text(), 20, "--open to say so")
    assert "Traceback" not in log.read_text()


def test_serve_with_its_local_worker_runs_the_minimal_spec(server, tmp_path):
    launch, procs = server
    url = launch()
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "submit", str(MINIMAL), "--api", url],
        env={**os.environ, "WTACRS_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    job = wait_for(lambda: (j := job_status(url, job_id))["status"] in ("succeeded", "failed") and j, 300, "the job")
    assert job["status"] == "succeeded", job["errors"]
    assert len(job["results"]) == 4 and all(r["peak_bytes"] > 0 for r in job["results"])
    # stopping the server stops its local worker too (uvicorn re-raises SIGTERM, so no `finally`)
    server_proc = procs[0]
    children = Path(f"/proc/{server_proc.pid}/task/{server_proc.pid}/children")
    workers = [int(p) for p in children.read_text().split()]
    assert len(workers) == 1, workers  # the local worker
    server_proc.terminate()
    server_proc.wait(timeout=30)
    wait_for(
        lambda: not any(Path(f"/proc/{w}").exists() and "zombie" not in _state(w) for w in workers),
        15,
        "the local worker to exit with its server",
    )


def test_a_worker_killed_mid_job_hands_it_to_another(server, tmp_path):
    launch, procs = server
    url = launch(worker=False, WTACRS_LEASE_SECONDS="4")
    spec = json.loads(MINIMAL.read_text()) | {"steps": 20, "batch_sizes": [2, 4, 8]}  # long enough to be caught
    job_id = httpx.post(f"{url}/api/jobs", json=spec, headers={"Authorization": f"Bearer {TOKEN}"}).json()["id"]
    first = start(["worker", "--api", url, "--name", "first", "--poll", "0.5"], tmp_path, "first")
    procs.append(first)
    wait_for(lambda: job_status(url, job_id)["status"] == "running", 120, "the first worker to claim")
    time.sleep(3)  # mid-measurement
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    second = start(["worker", "--api", url, "--name", "second", "--poll", "0.5"], tmp_path, "second")
    procs.append(second)
    job = wait_for(lambda: (j := job_status(url, job_id))["status"] in ("succeeded", "failed") and j, 400, "the job")
    assert job["status"] == "succeeded", job["errors"]
    assert job["attempts"] == 2 and len(job["results"]) == 6  # stored once, from the second attempt
    events = httpx.get(f"{url}/api/jobs/{job_id}/events").json()
    kinds = [e["kind"] for e in events]
    assert kinds == ["created", "claimed", "lease_expired", "claimed", "succeeded"], kinds
    assert events[1]["actor"] != events[3]["actor"]
