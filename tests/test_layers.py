"""The layers import only downwards: contract <- wtacrs <- profiler <- app (see ARCHITECTURE.md).
Checked on the source, so a lazy import inside a function counts too; and `app` is imported with
torch made unimportable, since the server runs where there is none."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "wtacrs", "profiler", "app")
# what each package may import from the others; app/cli.py is the one app module that reaches the
# profiler (its commands), and contract reads the family registry, which is torch-free
ALLOWED = {
    "contract": {"wtacrs.families"},
    "wtacrs": set(),
    "profiler": {"contract", "wtacrs"},
    "app": {"contract"},
}
EXCEPTIONS = {"app/cli.py": {"profiler"}}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_go_downwards_only(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        allowed = ALLOWED[package] | EXCEPTIONS.get(rel, set())
        for name in _imports(path):
            top = name.split(".")[0]
            if (
                top in PACKAGES
                and top != package
                and not any(name == a or name.startswith(a + ".") or top == a for a in allowed)
            ):
                bad.append(f"{rel} imports {name}")
    assert not bad, "\n".join(bad)


BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'peft'):
            raise ImportError(f'{name} is blocked: the server must run without it')
sys.meta_path.insert(0, Block())
"""


def test_the_app_runs_without_torch(tmp_path):
    code = (
        BLOCK_TORCH
        + """
import os
os.environ['DATABASE_URL'] = 'sqlite:///' + os.path.join(os.environ['TMP_DIR'], 'db.sqlite')
os.environ['WTACRS_ADMIN_TOKEN'] = 'admin-token-for-test'
from fastapi.testclient import TestClient
from app.main import create_app
import app.cli
with TestClient(create_app()) as client:
    auth = {'Authorization': 'Bearer admin-token-for-test'}
    spec = {'model': 'bert-tiny', 'methods': ['full', 'wtacrs@0.3'], 'seq_len': 64, 'batch_sizes': [2, 4],
            'dtype': 'fp32', 'measurements': ['peak_memory', 'throughput'], 'device': 'cpu', 'steps': 2, 'warmup': 1}
    r = client.post('/api/jobs', json=spec, headers=auth)
    assert r.status_code == 201, r.text
    assert client.get('/jobs/' + r.json()['id'], headers=auth).status_code == 200
print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft')))
"""
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"TMP_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
