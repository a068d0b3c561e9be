"""The family x setting grids in tiers: every case runs in the full suite (the README's command,
CI), and one representative per family stays in the fast tier (`pytest -m "not slow"`).

The representatives walk the settings diagonally: family i gets setting i mod len(settings), so
each family runs once and, with at least as many families as settings, each setting runs at
least once too. A fast run so still meets every family and every dtype/LoRA combination."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest


def _id(value) -> str:
    return value if isinstance(value, str) else str(value)


def family_grid(families: Sequence[str], *axes: Sequence, ids: Sequence[Sequence[str]] | None = None) -> list:
    """pytest params (family, *setting) for every family x product(axes), with the pytest ids the
    stacked `parametrize` decorators gave (`bert-bf16-autocast-preset`); all but the diagonal slow."""
    settings = list(itertools.product(*axes))
    names = list(itertools.product(*ids)) if ids else [tuple(map(_id, s)) for s in settings]
    params = []
    for i, family in enumerate(sorted(families)):
        for j, (setting, name) in enumerate(zip(settings, names)):
            marks = () if j == i % len(settings) else (pytest.mark.slow,)
            params.append(pytest.param(family, *setting, id="-".join((family, *name)), marks=marks))
    return params
