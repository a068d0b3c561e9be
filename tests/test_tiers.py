"""The working tier's list (tests/tiers.py) names tests that exist, and leaves every test module
at least one test in the working tier."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiers import FULL_RUN_MODULES, FULL_RUN_ONLY, ONE_CASE

ROOT = Path(__file__).resolve().parents[1]


def _tests_in(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test")}


def test_every_entry_names_a_test():
    missing = []
    for entry in [*FULL_RUN_ONLY, *ONE_CASE]:
        path, _, name = entry.partition("::")
        found = _tests_in(path) if (ROOT / path).is_file() else set()
        if not any(t == name or t.startswith(name) for t in found):
            missing.append(entry)
    assert not missing, missing


def _collected(*args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args, "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line}


@pytest.mark.slow
def test_every_module_keeps_a_test_in_the_working_tier():
    every, working = _collected(), _collected("-m", "not slow")
    assert every - working == set(FULL_RUN_MODULES), sorted((every - working) ^ set(FULL_RUN_MODULES))
