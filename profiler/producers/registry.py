"""Which code produces each measurement's rows: the profiler's half of the measurement registry
(`contract/measurements.py` is the other). A producer yields lists of rows, one list per unit of
progress, and says how many units it will yield."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from contract.measurements import MEASUREMENTS
from contract.methods import Method
from contract.rows import AttributionRow, Row
from contract.spec import JobSpec

from .outcome import failure
from .progress import announce

Tick = Callable[[str], None]


@dataclass(frozen=True)
class Producer:
    run: Callable[[JobSpec, Method, Tick], Iterator[list[Row]]]
    units: Callable[[JobSpec, Method], int]


def _trials(spec: JobSpec, method: Method, tick: Tick) -> Iterator[list[Row]]:
    from .sweep import sweep_rows

    for row in sweep_rows(spec, method):
        yield [row]


def _max_batch(spec: JobSpec, method: Method, tick: Tick) -> Iterator[list[Row]]:
    from .trials import max_batch_row

    yield [max_batch_row(spec, method)]


def _attribution(spec: JobSpec, method: Method, tick: Tick) -> Iterator[list[Row]]:
    from .attribution import attribute_spec

    batch = max(spec.batch_sizes)  # where memory matters most among the sizes asked for
    announce(f"attributing saved memory at batch {batch}")
    row: dict = {"method": method.name, "batch_size": batch, "mode": spec.device}
    try:
        row = attribute_spec(spec, method.name, batch)
    except Exception as err:  # as for a trial: an OOM is a measurement, anything else this row's error
        row.update(failure(err))
    yield [AttributionRow.model_validate(row)]


def _has_fidelity(method: Method) -> bool:
    """Sampled gradients (a sampler) or MEFT's reconstructed ones: both differ from exact backprop."""
    return method.sampler is not None or bool(method.meft)


def _fidelity(spec: JobSpec, method: Method, tick: Tick) -> Iterator[list[Row]]:
    from .fidelity import fidelity_rows

    if _has_fidelity(method):  # an exact method's gradient has no error to measure
        announce(f"gradient fidelity at batch {min(spec.batch_sizes)}")
        yield fidelity_rows(spec, method, min(spec.batch_sizes))


def _convergence(spec: JobSpec, method: Method, tick: Tick) -> Iterator[list[Row]]:
    from ..trial.mode import device_for
    from .convergence import convergence_row

    yield [convergence_row(spec, method, device_for(spec), tick)]


_TRIALS = Producer(_trials, lambda spec, method: len(spec.batch_sizes))
# peak_memory and throughput share one producer: a trial row carries both, and runs once
PRODUCERS: dict[str, Producer] = {
    "peak_memory": _TRIALS,
    "throughput": _TRIALS,
    "memory_attribution": Producer(_attribution, lambda spec, method: 1),
    "max_batch_size": Producer(_max_batch, lambda spec, method: 1),
    "fidelity": Producer(_fidelity, lambda spec, method: int(_has_fidelity(method))),
    # a tick per epoch, then the row
    "convergence": Producer(_convergence, lambda spec, method: spec.convergence.epochs + 1),
}


def producers_for(spec: JobSpec) -> list[tuple[str, Producer]]:
    """(result field, producer) for what the spec asks, each producer once, in registry order."""
    out: list[tuple[str, Producer]] = []
    for name, measurement in MEASUREMENTS.items():
        producer = PRODUCERS[name]
        if name in spec.measurements and all(p is not producer for _, p in out):
            out.append((measurement.field, producer))
    return out
