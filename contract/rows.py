"""The rows a job produces, one pydantic model per kind. The runner builds them, the worker posts
them, the API validates them with these same models, the store and the charts read their fields.

Rows keep unknown fields (`extra="allow"`): a newer worker may report more than this server
knows, and a stored row stays readable after a field is added. What a field means is in its
description, which is also what `/docs` shows."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["cuda", "cpu", "estimate"]
# Where a byte of a training step's memory belongs. The tracker fills these; the charts stack them.
CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations", "other")
Bytes = int | None


class Row(BaseModel):
    model_config = ConfigDict(extra="allow")


class Probe(BaseModel):
    batch_size: int
    fits: bool
    peak_bytes: Bytes = Field(None, description="None when the probe ran out of memory")
    reason: str = ""


class RankPeak(BaseModel):
    """One rank of a measured DDP/FSDP trial."""

    rank: int
    peak_bytes: Bytes = None
    first_step_peak_bytes: Bytes = None
    step_time_s: float | None = Field(None, description="this rank's median step time")


class TrialRow(Row):
    """One (method, batch size): memory of a few training steps, and their speed when asked for."""

    method: str
    batch_size: int
    seq_len: int | None = None
    mode: Mode
    measured: bool = Field(True, description="False for an estimate (FakeTensorMode trace)")
    oom: bool = False
    oom_message: str | None = None
    error: str | None = None
    estimate_device: str | None = Field(None, description="estimate mode: the device model the trace assumed")
    peak_bytes: Bytes = Field(None, description="peak allocated over the run, optimizer steps included")
    first_step_peak_bytes: Bytes = Field(None, description="peak of the first step, before optimizer state exists")
    activation_bytes: Bytes = Field(None, description="bytes saved for backward in the first step")
    tracked_peak_bytes: Bytes = None
    reserved_bytes: Bytes = Field(None, description="cuda: peak reserved by the caching allocator")
    workspace_bytes: Bytes = Field(None, description="estimate on a CUDA model: cuBLAS workspaces in the peaks")
    process_device_bytes: Bytes = None
    breakdown: dict[str, int] | None = Field(None, description=f"bytes at the run's peak by {CATEGORIES}")
    first_step_breakdown: dict[str, int] | None = None
    step_time_s: float | None = Field(None, description="median over the timed steps, after warm-up")
    step_time_min_s: float | None = None
    step_time_max_s: float | None = None
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    timed_steps: int | None = None
    strategy: str | None = Field(None, description="parallel strategy: ddp or fsdp (None: one device)")
    world_size: int | None = Field(
        None,
        description="ranks; memory fields and batch_size are per rank, tokens_per_s and samples_per_s "
        "are of all ranks together (world_size x batch_size per step)",
    )
    rank: int | None = Field(
        None, description="estimate: the rank traced (0, which holds the largest shard); memory fields describe it"
    )
    ranks: list[RankPeak] | None = Field(
        None, description="measured ddp/fsdp: every rank; peak_bytes and step_time_s are the max over them"
    )
    peak_spread_bytes: Bytes = Field(None, description="measured ddp/fsdp: max - min of the ranks' peak_bytes")
    compiled: bool = Field(
        False,
        description="the step's model ran under torch.compile (spec compile: true); step times and peaks are of "
        "the compiled step, measured after the warm-up that compiled it",
    )
    compile_backend: str | None = Field(None, description="compiled: the torch.compile backend (inductor)")
    compile_s: float | None = Field(
        None,
        description="compiled: wall time of the compiling warm-up (forward and backward until a step compiled "
        "nothing new; it includes that last, already compiled, step)",
    )
    compile_graphs: int | None = Field(
        None,
        description="compiled: graphs Dynamo compiled for the step; more than one means graph breaks or "
        "recompiles (a patched model compiles a second time in the second warm-up step, for the gradient-norm "
        "tables its first step created)",
    )
    compile_graph_breaks: int | None = Field(
        None, description="compiled: graph breaks Dynamo hit while compiling the step (0: the step is whole graphs)"
    )
    recompiles_measured: int | None = Field(
        None, description="compiled: graphs compiled during the measured steps (0: no compilation in what was measured)"
    )

    @property
    def fits(self) -> bool:
        return not self.oom and not self.error and self.peak_bytes is not None


class MaxBatchRow(Row):
    method: str
    max_batch_size: int = Field(description="0 when even batch 1 does not fit")
    mode: Mode
    seq_len: int | None = None
    limit_bytes: float | None = None
    headroom: float | None = None
    capped_at_upper: bool = False
    probes: list[Probe] = []


class FidelityRow(Row):
    """One replaced layer: the sampled weight gradient against the exact one on the same batch."""

    method: str
    batch_size: int
    layer: str
    relative_error: float | None = None
    relative_bias: float | None = None
    relative_variance: float | None = None
    draws: int
    exact_norm: float | None = None


class Evaluation(BaseModel):
    epoch: int
    step: int
    accuracy: float
    loss: float


class ConvergenceRow(Row):
    """A real fine-tuning run of one method: loss curve, held-out accuracy, time and memory."""

    method: str
    mode: Mode
    seed: int | None = None
    measured: bool = True
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    lr: float | None = None
    losses: list[float] = []
    evals: list[Evaluation] = []
    accuracy: float | None = None
    val_loss: float | None = None
    train_time_s: float | None = None
    tokens_per_s: float | None = None
    peak_bytes: Bytes = None
    peak_measured_over: str | None = None
    data: str | None = Field(None, description="the TSV trained on, on the worker's disk")
    train_examples: int | None = None
    val_examples: int | None = None
    norm_source: str | None = None
    cache_bytes: Bytes = Field(None, description="the sampler's per-example norm cache")
    cache_examples_seen: int | None = None


class ModuleBytes(BaseModel):
    module: str = Field(description="module path in the model ('' is the model itself)")
    type: str = ""
    bytes: int
    ops: dict[str, int] = Field(default_factory=dict, description="bytes by the op that saved them")


class AttributionRow(Row):
    """Where the first training step's saved activations live: bytes alive for backward, by module
    path and by the op that saved them (each storage counted once, for its first saver)."""

    method: str
    batch_size: int
    mode: Mode
    oom: bool = False
    error: str | None = None
    estimate_device: str | None = None
    total_bytes: Bytes = Field(None, description="sum over modules, each storage rounded to the allocator block")
    raw_bytes: Bytes = Field(None, description="the same storages unrounded: the trial row's activation_bytes")
    block_bytes: int | None = None
    peak_activation_bytes: Bytes = Field(None, description="of them, alive at the step's peak")
    module_count: int | None = None
    modules: list[ModuleBytes] = Field(default_factory=list, description="largest first, then '(other)'")
    ops: dict[str, int] = Field(default_factory=dict)
    groups: list[ModuleBytes] = Field(
        default_factory=list, description="module paths with layer indices folded (encoder.block.*.layer.0...)"
    )


class Environment(Row):
    """What the rows were measured on."""

    mode: Mode | None = None
    device_name: str | None = None
    device_total_bytes: int | None = None
    torch_version: str | None = None
    transformers_version: str | None = None
