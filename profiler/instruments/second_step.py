"""Step 2's forward and backward in an estimate's event log, written from step 1's instead of traced.

An estimate traces step 1's forward and backward, then the steady state: the optimizer's first step
(which makes its state), step 2's forward and backward, and the optimizer again. Under FakeTensorMode
a forward and backward is most of a trace (on T5-Large about 40% of it is step 2's), and step 2's makes
the same storages as step 1's, in the same order and sizes (the same ops on the same shapes): only
the optimizer's state is now held beside them. So the trial runs the optimizer twice on step 1's
gradients (the second is a steady step: its state exists), lets the gradients go, and `repeat`
writes the log a traced step 2 would have made: step 1's forward and backward again, its storages
renamed, between the two optimizer steps. The log's replay (instruments/replay.py) then gives the
steady peak and its breakdown.

That holds when step 1's forward and backward free only what they made, and what they made and
kept past their end is the gradients (which the optimizer's zero_grad frees) and storages kept for
good, which step 2 finds and does not make again (a WTA-CRS layer's gradient-norm history); and
when the optimizer's steps touch none of it. `repeat` checks exactly that and refuses otherwise,
and the caller then traces a forward, backward and optimizer step (trial/measure.py). Against
traced steps it is checked to the byte on every family, method and dtype the profiler builds
(tests/profiler/test_second_step.py).
"""

from __future__ import annotations

import numpy as np

from contract.rows import CATEGORIES

from .replay import ALLOC, FREE, RESET, STEP

GRADIENTS = CATEGORIES.index("gradients")


def repeat(
    kinds: np.ndarray,
    gens: np.ndarray,
    sizes: np.ndarray,
    category: dict[int, int],
    first_category: dict[int, int],
    marks: tuple[int, int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, int]] | None:
    """The log's columns (kind, generation, size) and categories with step 2's forward and backward
    written in, or None where step 1's cannot stand for it.

    The log holds, in order: what came before the peak's reset, step 1's forward and backward (from
    the RESET to the STEP mark), the optimizer's first step (from marks[0]), its second (from marks[1]),
    zero_grad (from marks[2] to the end). `first_category` says which storages were gradients at the
    STEP mark.
    """
    optimizer, second, zero = marks
    reset, step = _only(kinds, RESET), _only(kinds, STEP)
    if reset is None or step is None or not reset < step < optimizer <= second <= zero <= len(kinds):
        return None
    forward = slice(reset + 1, step)
    made = set(gens[forward][kinds[forward] == ALLOC].tolist())
    if not made.issuperset(gens[forward].tolist()):
        return None  # step 1 freed or resized a storage made before it
    freed = set(gens[forward][kinds[forward] == FREE].tolist())
    alive = made - freed
    grads = {g for g in alive if first_category.get(g) == GRADIENTS}
    kept = alive - grads
    if made.intersection(gens[optimizer:zero].tolist()):
        return None  # an optimizer step made, freed or resized a storage of the forward or backward
    if not (kinds[zero:] == FREE).all() or sorted(gens[zero:].tolist()) != sorted(grads):
        return None  # zero_grad freed something else than the step's gradients, or not all of them
    shift = int(gens.max()) + 1  # step 2's storages: step 1's renamed above every generation in the log
    copy = np.arange(forward.start, forward.stop)
    if kept:
        copy = copy[~np.isin(gens[copy], list(kept))]  # made once, found by step 2
    zero_grad = np.arange(zero, len(kinds))
    # step 1 and the first optimizer step; zero_grad; step 2; the second optimizer step; zero_grad again,
    # which frees step 2's gradients
    order = np.concatenate([np.arange(second), zero_grad, copy, np.arange(second, zero), zero_grad])
    renamed = np.zeros(len(order), dtype=bool)
    start = second + len(zero_grad)
    renamed[start : start + len(copy)] = True
    renamed[len(order) - len(zero_grad) :] = True
    new_gens = np.where(renamed, gens[order] + shift, gens[order])
    new_category = dict(category)
    new_category.update({g + shift: category[g] for g in made - kept if g in category})
    return kinds[order], new_gens, sizes[order], new_category


def _only(kinds: np.ndarray, kind: int) -> int | None:
    """The index of the one event of this kind; None when there is none or more than one."""
    where = np.flatnonzero(kinds == kind)
    return int(where[0]) if len(where) == 1 else None
