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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(path: Path, modules: set[str]):
    """The modules of this code base that `path` imports (relative imports resolved, lazy ones
    inside functions included), each named as the module, not the package, it reaches."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from pkg import mod` names a module; `from mod import name` the module itself
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != here:
                yield name


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle_inside_a_package(package):
    """Modules of a package import one way too (lazy imports count): a circle is a package whose
    pieces cannot be read, tested or moved one at a time."""
    paths = {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}
    modules = set(paths)
    graph = {name: set(_targets(path, modules)) for name, path in paths.items()}
    # a package's __init__ re-exporting its modules is no circle of theirs
    for name in graph:
        graph[name] = {t for t in graph[name] if not (paths[t].name == "__init__.py" and name.startswith(t + "."))}
    assert not _cycles(graph), "\n".join(" <-> ".join(c) for c in _cycles(graph))


def test_the_circle_check_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


# profiler's own layers, lowest first: instruments measure, trial builds and steps a model,
# producers make a measurement's rows, and the runner, worker, CLI and tables sit on top
PROFILER_LAYERS = ("profiler.instruments", "profiler.trial", "profiler.producers", "profiler")


def test_profiler_layers_import_downwards_only():
    def layer(module: str) -> int:
        return next(
            i for i, prefix in enumerate(PROFILER_LAYERS) if module == prefix or module.startswith(prefix + ".")
        )

    paths = {_module_name(p): p for p in sorted((ROOT / "profiler").rglob("*.py"))}
    bad = [
        f"{name} imports {target}"
        for name, path in paths.items()
        for target in _targets(path, set(paths))
        if layer(target) > layer(name)
    ]
    assert not bad, "\n".join(bad)
