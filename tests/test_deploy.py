import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docker_compose_file_is_valid():
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    env = {**os.environ, "WTACRS_ADMIN_TOKEN": "x"}
    out = subprocess.run([tool, "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for service in ("postgres:", "api:", "worker:"):
        assert service in out.stdout
    assert "driver: nvidia" in out.stdout


@pytest.mark.parametrize("image", ["server", "worker"])
def test_each_image_copies_every_package_it_installs(image):
    """pip installs what pyproject's find finds: a package left out of the image's COPY lines is
    silently not installed, and the image fails at its first import (both once lacked contract/)."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    lines = (ROOT / "docker" / f"{image}.Dockerfile").read_text().splitlines()
    copied = {line.split()[1] for line in lines if line.startswith("COPY ")}
    assert packages <= copied, f"{image}.Dockerfile does not copy {sorted(packages - copied)}"


def test_readme_starts_with_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash\n")[1:3]]
    assert blocks[0] == "bash scripts/setup.sh && .venv/bin/wtacrs-prof serve --open"
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1] in ci.splitlines()


@pytest.mark.parametrize("worker_token", ["wrk", None])
def test_the_worker_authenticates_with_the_real_token(worker_token):
    """Compose v1 renders a nested default (${A:-${B}}) literally: the worker must still get
    the worker token, or the admin token when none is set, never a `$` string."""
    import json

    import yaml

    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WTACRS_")} | {"WTACRS_ADMIN_TOKEN": "adm"}
    if worker_token:
        env["WTACRS_WORKER_TOKEN"] = worker_token
    out = subprocess.run([tool, "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    worker_env = yaml.safe_load(out.stdout)["services"]["worker"]["environment"]
    assert not any("$" in str(v) for v in worker_env.values()), worker_env
    # the image's command picks the token in its shell: run that choice with the rendered env
    cmd = next(
        line for line in (ROOT / "docker" / "worker.Dockerfile").read_text().splitlines() if line.startswith("CMD")
    )
    script = json.loads(cmd[len("CMD") :])[-1]
    script = script.split(" exec ")[0] + ' && printf %s "$WTACRS_TOKEN"'
    shown = subprocess.run(
        ["sh", "-c", script], env={k: str(v) for k, v in worker_env.items()}, capture_output=True, text=True
    )
    assert shown.stdout == (worker_token or "adm")
