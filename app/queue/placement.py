"""Which worker may claim which job: the one rule, and what a worker advertises.

- A `cuda` job needs one GPU per rank: its parallel `world_size` (1 without a strategy), on one
  worker, since the profiler launches every rank on the worker's host. A worker with fewer GPUs
  passes over it; the claim's one statement filters on the job's `gpus_needed` column.
- A `cpu` job needs no GPU. Its `world_size` ranks are gloo processes on the worker's host, which
  any worker can start: the spec already bounds them (`contract.spec.MAX_CPU_RANKS`), and a host
  with fewer cores than ranks is slower, not wrong. So `cpu_ranks` is advertised and recorded, and
  deliberately not a condition.
- An `estimate` job traces rank 0 in one process: any worker.
- GPU memory is advertised and recorded, not matched: a job that does not fit reports OOM rows,
  which are measurements.

A worker older than this rule sends no capabilities. It is taken at its registration: the old
worker reported `device_memory_bytes` only for a CUDA device, so one GPU if it did, else none (the
CPU-only local worker of `wtacrs-prof serve` keeps claiming cpu and estimate jobs)."""

from __future__ import annotations

from dataclasses import dataclass

from contract.spec import MAX_CPU_RANKS, JobSpec


@dataclass(frozen=True)
class Capabilities:
    gpus: int = 0
    gpu_memory_bytes: int | None = None  # per GPU (the smallest, where they differ)
    cpu_ranks: int = MAX_CPU_RANKS

    @classmethod
    def legacy(cls, device_memory_bytes: int | None) -> Capabilities:
        """A worker that advertised nothing, from what it registered with."""
        if device_memory_bytes:
            return cls(gpus=1, gpu_memory_bytes=device_memory_bytes)
        return cls()

    def describe(self) -> str:
        """As the `claimed` event's detail records it."""
        memory = "" if self.gpu_memory_bytes is None else f" of {self.gpu_memory_bytes / 2**30:.1f} GiB"
        return f"worker has {self.gpus} GPU{'' if self.gpus == 1 else 's'}{memory}, {self.cpu_ranks} cpu ranks"

    def can_run(self, gpus_needed: int) -> bool:
        return gpus_needed <= self.gpus


NO_GPU = Capabilities()


def gpus_needed(spec: JobSpec) -> int:
    if spec.device != "cuda":
        return 0
    return spec.parallel.world_size if spec.parallel.strategy != "none" else 1


def needs(spec: dict, gpus: int) -> str:
    """What a job waits for, in words: 'a worker with 2 GPUs (cuda, fsdp world_size 2)'."""
    if gpus == 0:
        return "a worker"
    parallel = spec.get("parallel") or {}
    strategy = parallel.get("strategy", "none")
    how = f"cuda, {strategy} world_size {gpus}" if strategy != "none" else "cuda"
    return f"a worker with {gpus} GPU{'' if gpus == 1 else 's'} ({how})"
