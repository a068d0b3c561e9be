"""Step 2 of an estimate written from step 1 (instruments/second_step.py): on every family the
profiler builds, every method and every dtype, the row is the traced one's to the byte and the event
log is the traced one's up to the names of its storages; where step 1 cannot stand for step 2 the
log is refused and step 2 is traced."""

import numpy as np
import pytest

from contract.methods import parse_method
from contract.spec import JobSpec
from profiler.instruments import second_step
from profiler.instruments.replay import ALLOC, FREE, RESET, STEP
from profiler.producers import single
from profiler.trial import measure
from wtacrs.families import FAMILIES
from wtacrs.meft_blocks import FAMILIES as MEFT_FAMILIES

METHODS = ["full", "lora", "checkpointing", "wtacrs@0.3", "lora+wtacrs@0.1", "offload", "meft1"]
LOW_PRECISION = {"bf16": ["full", "wtacrs@0.3", "lora+wtacrs@0.1"], "fp16": ["wtacrs@0.3"]}
LOW_PRECISION["bf16-weights"] = ["full", "lora+wtacrs@0.1"]


def _canonical(log) -> tuple:
    """The log with its storages named by order of first appearance."""
    names: dict[int, int] = {}
    gens = [names.setdefault(int(g), len(names)) if k not in (RESET, STEP) else 0 for k, g in zip(log.kinds, log.gens)]
    return (
        log.kinds.tolist(), gens, log.sizes.tolist(), log.cats.tolist(), log.first_cats.tolist(),
        log.reset, log.step, log.block, log.fixed,
    )  # fmt: skip


def _both(spec: JobSpec, name: str, monkeypatch) -> tuple:
    method, out, refused = parse_method(name), {}, []
    written = measure.second_step_written

    def spy(*args):
        log = written(*args)
        refused.append(log is None)
        return log

    monkeypatch.setattr(measure, "second_step_written", spy)
    for how in ("traced", "written"):
        monkeypatch.setenv(measure.SECOND_STEP_ENV, how)
        logs: dict = {}
        row = single.trial_row(spec, method, 5, throughput=False, logs=logs)
        assert not row.error, (name, row.error)
        out[how] = (row.model_dump(), logs[5])
    assert refused == [False], (name, "step 2 was traced after all")
    return out["traced"], out["written"]


def _cases():
    for family in FAMILIES:
        for dtype, methods in [("fp32", METHODS), *LOW_PRECISION.items()]:
            for name in methods:
                if parse_method(name).meft and family not in MEFT_FAMILIES:
                    continue  # MEFT has no form for it (README, Methods)
                yield family, dtype, name


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_written_step_two_is_the_traced_one(family, monkeypatch):
    """Rows to the byte (both peaks, both breakdowns, tracked peak, activations) and the event log."""
    for _, dtype, name in (case for case in _cases() if case[0] == family):
        spec = JobSpec.model_validate(
            {
                "model": {"family": family, "overrides": dict(FAMILIES[family].tiny)},
                "methods": [name],
                "seq_len": 32,
                "batch_sizes": [5],
                "dtype": dtype,
            }
            | {"device": "estimate", "measurements": ["peak_memory"]}
        )
        (traced_row, traced_log), (written_row, written_log) = _both(spec, name, monkeypatch)
        assert written_row == traced_row, (dtype, name)
        assert _canonical(written_log) == _canonical(traced_log), (dtype, name)
        assert written_log.peak() == written_row["peak_bytes"]
        assert written_row["workspace_bytes"] > 0  # the CUDA device's estimate: where step 2 is written


def test_an_estimate_of_the_cpu_traces_step_two(monkeypatch):
    """There step 1 cannot stand for step 2: the layers sharing a sample (q, k, v) learn their
    partners in step 1, and the CPU's reference code then computes each partner's gradient factor
    in ops of its own (the CUDA kernel takes the tables in): step 2 makes storages step 1 did not."""
    spec = JobSpec.model_validate(
        {"model": "t5-tiny", "methods": ["full"], "seq_len": 32, "batch_sizes": [5], "device": "estimate"}
        | {"measurements": ["peak_memory"], "estimate_device": "cpu"}
    )
    called = []
    monkeypatch.setattr(measure, "second_step_written", lambda *a: called.append(a))
    rows = {}
    for how in ("traced", "written"):
        monkeypatch.setenv(measure.SECOND_STEP_ENV, how)
        rows[how] = single.trial_row(spec, parse_method("wtacrs@0.3"), 5, throughput=False).model_dump()
    assert not rows["written"]["error"] and not called
    assert rows["written"] == rows["traced"]


# -- what repeat refuses ------------------------------------------------------------------------


def _log(events: list[tuple[int, int, int]], grads=(), marks=None):
    """Columns of a hand-made log: pre-reset, RESET, the forward and backward, STEP, then the two
    optimizer steps and zero_grad at the given marks."""
    kinds, gens, sizes = (np.array(c, dtype=np.int64) for c in zip(*events))
    first = dict.fromkeys(grads, second_step.GRADIENTS)
    return kinds.astype(np.int8), gens, sizes, dict(first), first


def test_a_well_formed_log_gets_step_two_between_the_optimizer_steps():
    events = [
        (ALLOC, 1, 100),  # a parameter
        (RESET, 0, 0),
        (ALLOC, 2, 10), (ALLOC, 3, 20), (FREE, 2, 0),  # an activation; 3 is the gradient
        (STEP, 0, 0),
        (ALLOC, 4, 30), (ALLOC, 5, 7), (FREE, 5, 0),  # optimizer 1: state 4, a temporary
        (ALLOC, 6, 7), (FREE, 6, 0),  # optimizer 2: a temporary
        (FREE, 3, 0),  # zero_grad
    ]  # fmt: skip
    kinds, gens, sizes, category, first = _log(events, grads=[3])
    kinds2, gens2, sizes2, _ = second_step.repeat(kinds, gens, sizes, category, first, marks=(6, 9, 11))
    assert [(int(k), int(g), int(s)) for k, g, s in zip(kinds2, gens2, sizes2)] == [
        *events[:9], (FREE, 3, 0), (ALLOC, 9, 10), (ALLOC, 10, 20), (FREE, 9, 0), (ALLOC, 6, 7), (FREE, 6, 0), (FREE, 10, 0),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "events, why",
    [
        (
            [(ALLOC, 1, 100), (RESET, 0, 0), (FREE, 1, 0), (ALLOC, 2, 5), (STEP, 0, 0), (FREE, 2, 0)],
            "frees an older storage",
        ),
        ([(RESET, 0, 0), (ALLOC, 2, 5), (STEP, 0, 0), (FREE, 2, 0)], "zero_grad frees what is no gradient"),
        ([(RESET, 0, 0), (ALLOC, 2, 5), (STEP, 0, 0), (FREE, 2, 0), (FREE, 2, 0)], "an optimizer step frees it"),
        ([(RESET, 0, 0), (ALLOC, 2, 5), (ALLOC, 3, 5), (STEP, 0, 0), (FREE, 2, 0)], "a gradient zero_grad leaves"),
        ([(ALLOC, 2, 5), (STEP, 0, 0), (FREE, 2, 0)], "no reset"),
    ],
)
def test_repeat_refuses_what_step_two_would_not_repeat(events, why):
    n = len(events)
    kinds, gens, sizes, category, first = _log(events, grads=[2, 3])
    marks = {"an optimizer step frees it": (n - 2, n - 2, n - 1)}.get(why, (n - 1, n - 1, n - 1))
    if why == "zero_grad frees what is no gradient":
        first = {}
    assert second_step.repeat(kinds, gens, sizes, category, first, marks=marks) is None, why


def test_a_refused_log_traces_step_two(monkeypatch):
    """Where repeat refuses, the row is still the traced one's: a forward, backward and optimizer
    step are traced after the optimizer's two steps."""
    monkeypatch.setattr(second_step, "repeat", lambda *a, **k: None)
    spec = JobSpec.model_validate(
        {"model": "bert-tiny", "methods": ["full"], "seq_len": 32, "batch_sizes": [5], "device": "estimate"}
        | {"measurements": ["peak_memory"]}
    )
    rows = {}
    for how in ("traced", "written"):
        monkeypatch.setenv(measure.SECOND_STEP_ENV, how)
        logs: dict = {}
        rows[how] = single.trial_row(spec, parse_method("wtacrs@0.3"), 5, throughput=False, logs=logs).model_dump()
        assert logs[5].peak() == rows[how]["peak_bytes"]
    assert rows["written"] == rows["traced"]
