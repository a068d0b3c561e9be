"""A trial row on one device: peak memory with its breakdown (eager or compiled), the bytes an
offloading method kept in host memory, the step time, in the spec's mode."""

from __future__ import annotations

from contract.methods import Method
from contract.rows import TrialRow
from contract.spec import JobSpec

from ..instruments.cpu_allocator import FIRST_STEP, CPUAllocatorRecord
from ..instruments.environment import process_device_bytes
from ..instruments.replay import EventLog
from ..trial.build import free_cached
from ..trial.compiled import compile_step, compiled_graphs, measure_compiled_memory
from ..trial.measure import measure_memory, measure_throughput, reconcile
from ..trial.mode import mode_context, trial_in_mode
from .base import base_row, memory_limit, take_log
from .outcome import failure


def _host_bytes(spec: JobSpec, trial) -> int | None:
    """Offloading: what the measured steps kept in host memory (the README's *Methods*: on cpu the
    saved tensors are host memory already, nothing moves, 0; the estimate models the copy out)."""
    if spec.device == "cpu":
        return 0
    from wtacrs.offload import offload_stats

    stats = offload_stats(trial.model)
    return None if stats is None else int(stats["host_bytes"])


def trial_row(
    spec: JobSpec, method: Method, batch_size: int, throughput: bool = True, logs: dict[int, EventLog] | None = None
) -> TrialRow:
    """`logs`: where an estimate keeps its trace's event log, by batch size (instruments/replay.py)."""
    row = base_row(spec, method, batch_size)
    try:
        with trial_in_mode(spec, method, batch_size) as run:
            if not spec.compile:
                row.update(measure_memory(run.trial, spec.device, record=logs is not None))
                take_log(row, logs, batch_size)
            built = record = run.leave_mode()
            if spec.compile:  # cpu or cuda (the spec refuses estimate)
                # compiled in warm-up steps before anything is measured (compiled.compile_step), outside
                # the CPU record: profiling every op Dynamo traces would slow compiling severalfold
                row.update(compile_step(run.trial))
                free_cached(drop_compiled=False)  # what warm-up left cached is no floor under the peaks
                graphs = compiled_graphs()
                with mode_context(spec) as record:  # no storage tracker: it would make the step eager
                    row.update(measure_compiled_memory(run.trial, spec.device))
            if method.offload:
                row["host_bytes"] = _host_bytes(spec, run.trial)
            if isinstance(record, CPUAllocatorRecord):  # the allocator's own count, not the tracker's
                # above what was allocated before the model was built; compiled, the measured steps'
                # peak (eager, the whole run's, which is the steps' too: building never holds more)
                row["first_step_peak_bytes"] = record.peak(FIRST_STEP, since=built)
                row["peak_bytes"] = record.peak(since=built)
                reconcile(row)  # the breakdowns sum to these peaks
            limit = memory_limit(spec)
            if spec.device == "estimate" and limit is not None:
                row["oom"] = row["peak_bytes"] > limit  # would not fit the target device
            if spec.device == "cuda":
                row["process_device_bytes"] = process_device_bytes()
            if throughput and spec.device != "estimate" and "throughput" in spec.measurements:
                tokens = batch_size * spec.seq_len
                row.update(measure_throughput(run.trial, spec, tokens, batch_size))
            if spec.compile:
                row["recompiles_measured"] = compiled_graphs() - graphs
    except Exception as err:  # an OOM is a measurement; anything else is this row's error
        row.update(failure(err))
    return TrialRow.model_validate(row)
