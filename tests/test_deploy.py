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


def test_readme_starts_with_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash\n")[1:3]]
    assert blocks[0] == "bash scripts/setup.sh && .venv/bin/wtacrs-prof serve --open"
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1] in ci.splitlines()
