"""The rows a job produces, one pydantic model per kind. The runner builds them, the worker posts
them, the API validates them with these same models, the store and the charts read their fields.

Two ways in. A result a worker posts is validated with a `RowBounds` in the validation context
(`model_validate_json(raw, context={POSTED: bounds})`, built by `contract.results.bounds_for` from
the job's spec): then every field must be one a model declares, every float finite, every number
within its field's bounds (bytes in [0, 2^63-1], a batch size in [1, the job's largest], counts and
times not negative), every string within its length (an error message longer than MESSAGE_CHARS is
cut, with a marker, instead of refused), every row's method one the job asked for, and every list
within its size. Without that context (rows read back from the store, rows the profiler builds)
nothing of this is checked and unknown fields are kept (`extra="allow"`): a row stored before a
bound or a field existed stays readable. What a field means is in its description, which is also
what `/docs` shows."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError, PydanticKnownError, ValidationError, core_schema

Mode = Literal["cuda", "cpu", "estimate"]
# Where a byte of a training step's memory belongs. The tracker fills these; the charts stack them.
CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations", "other")

POSTED = "posted_rows"  # the validation-context key whose value is the RowBounds a posted result meets
MAX_INT = 2**63 - 1  # the store's BIGINT; also where a JSON number stops being an integer everywhere
NAME_CHARS = 64  # a method name (the grammar's names are short; the results column is 64 wide)
TEXT_CHARS = 1024  # a layer or module path, a version, a description
MESSAGE_CHARS = 4096  # an error or OOM message keeps this much, then a marker saying how much was cut
MAX_LIST = 1_000_000  # a loss curve (one value per step) or its evaluations


@dataclass(frozen=True)
class RowBounds:
    """What one job's posted result may hold: the job's methods (None: any), its largest batch size,
    and per `JobRows` list the most rows (a list not named: none may be posted)."""

    methods: frozenset[str] | None = None
    max_batch: int = 1_000_000
    rows: Mapping[str, int] = field(default_factory=dict)


def posted(info: ValidationInfo) -> RowBounds | None:
    """The bounds when this validation is of a posted result; None for a lenient read."""
    context = info.context
    return context.get(POSTED) if isinstance(context, dict) else None


def clip(text: str, limit: int = MESSAGE_CHARS) -> str:
    """`text`'s first `limit` characters and a marker saying how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters cut]"


@dataclass(frozen=True)
class Check:
    """The bounds of one field of a posted row (see the module docstring); `Annotated` metadata.

    lo/hi: numbers (every float must also be finite); chars: strings (clip: cut, not refused);
    items: lists and dicts, checked before their items are; batch: hi is the job's largest batch;
    method: one of the job's methods."""

    lo: float | None = None
    hi: float | None = None
    chars: int | None = None
    clip: bool = False
    items: int | None = None
    batch: bool = False
    method: bool = False

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        optional = type(None) in get_args(source)
        validate = self._validate if not optional else self._validate_optional
        return core_schema.with_info_wrap_validator_function(validate, handler(source))

    def _validate_optional(self, value: Any, validate, info: ValidationInfo) -> Any:
        try:
            return self._validate(value, validate, info)
        except ValidationError:
            if posted(info) is not None:
                raise
            # read back: a value stored under a field that was then an unknown extra (a worker
            # sent cpu_count: Infinity before the field was declared) reads as absent, never
            # as an error that would take the job's page down with it
            return None

    def __get_pydantic_json_schema__(self, schema, handler):
        """The bounds in /docs, on each branch of the type they apply to (not on null)."""
        out = handler(schema)
        by_type = {
            "integer": {"minimum": self.lo, "maximum": self.hi},
            "number": {"minimum": self.lo, "maximum": self.hi},
            "string": {"maxLength": None if self.clip else self.chars},
            "array": {"maxItems": self.items},
            "object": {"maxProperties": self.items},
        }
        for branch in out.get("anyOf", [out]) if isinstance(out, dict) else ():
            bounds = by_type.get(branch.get("type"), {})
            branch.update({k: v for k, v in bounds.items() if v is not None})
        return out

    def _validate(self, value: Any, validate, info: ValidationInfo) -> Any:
        bounds = posted(info)
        if bounds is None:
            return validate(value)
        if self.items is not None and isinstance(value, (list, dict)) and len(value) > self.items:
            kind = "List" if isinstance(value, list) else "Dictionary"
            raise PydanticKnownError(
                "too_long", {"field_type": kind, "max_length": self.items, "actual_length": len(value)}
            )
        value = validate(value)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise PydanticKnownError("finite_number")
        if isinstance(value, (int, float)):
            hi = bounds.max_batch if self.batch else self.hi
            hi = MAX_INT if hi is None and isinstance(value, int) else hi
            lo = -MAX_INT - 1 if self.lo is None and isinstance(value, int) else self.lo
            if lo is not None and value < lo:
                raise PydanticKnownError("greater_than_equal", {"ge": lo})
            if hi is not None and value > hi:
                why = " (the largest batch size this job's spec allows)" if self.batch else ""
                raise PydanticCustomError(
                    "less_than_equal", "Input should be less than or equal to {le}" + why, {"le": hi}
                )
        if isinstance(value, str):
            if "\x00" in value:  # no database text holds one
                if not self.clip:
                    raise PydanticCustomError("nul_character", "Input should not contain a NUL character")
                value = value.replace("\x00", "\ufffd")
            if self.chars is not None and len(value) > self.chars:
                if self.clip:
                    return clip(value, self.chars)
                raise PydanticKnownError("string_too_long", {"max_length": self.chars})
            if self.method and bounds.methods is not None and value not in bounds.methods:
                raise PydanticCustomError(
                    "unknown_method",
                    "method '{method}' is not one this job asked for; its methods: {methods}",
                    {"method": value, "methods": ", ".join(sorted(bounds.methods))},
                )
        return value


# The field types. Each says how a posted value is bounded; read back, each is the plain type.
Bytes = Annotated[int | None, Check(0, MAX_INT)]
FloatBytes = Annotated[float | None, Check(0, float(MAX_INT))]
Count = Annotated[int | None, Check(0, MAX_INT)]
Batch = Annotated[int, Check(1, batch=True)]
Seconds = Annotated[float | None, Check(0)]  # durations and rates: finite and not negative
Rate = Seconds
NonNegative = Seconds
Fraction = Annotated[float | None, Check(0, 1)]
Finite = Annotated[float | None, Check()]
Method = Annotated[str, Check(chars=NAME_CHARS, method=True)]
Key = Annotated[str, Check(chars=TEXT_CHARS)]
Text = Annotated[str | None, Check(chars=TEXT_CHARS)]
Message = Annotated[str | None, Check(chars=MESSAGE_CHARS, clip=True)]
Positive = Annotated[int | None, Check(1, MAX_INT)]
MAX_RANKS = 1024  # the spec's largest world_size
WorldSize = Annotated[int | None, Check(1, MAX_RANKS)]
Strategy = Annotated[str | None, Check(chars=16)]  # the results column is 16 wide
MAX_PROBES = 1024  # a max-batch search takes a few dozen
MAX_MODULES = 1024  # an attribution row keeps its largest modules (the profiler: 200) and "(other)"
ByteMap = Annotated[dict[Key, Annotated[int, Check(0, MAX_INT)]], Check(items=1024)]


class Checked(BaseModel):
    """A model of a posted result: a posted one names only declared fields (all unknown ones in
    one error, as `contract.spec.Strict` does); a lenient read ignores or keeps them."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and posted(info) is not None:
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                names = ", ".join(repr(str(k)[:64]) for k in unknown[:5])
                raise PydanticCustomError(
                    "extra_forbidden",
                    "unknown field {names}{more}; a {kind} has: {allowed}",
                    {"names": names, "more": more, "kind": cls.__name__, "allowed": ", ".join(cls.model_fields)},
                )
        return data


class Row(Checked):
    model_config = ConfigDict(extra="allow")


class Probe(Checked):
    batch_size: Batch
    fits: bool
    peak_bytes: Bytes = Field(None, description="None when the probe ran out of memory")
    reason: Message = ""


class RankPeak(Checked):
    """One rank of a measured DDP/FSDP trial."""

    rank: Annotated[int, Check(0, 1023)]
    peak_bytes: Bytes = None
    first_step_peak_bytes: Bytes = None
    step_time_s: Seconds = Field(None, description="this rank's median step time")


class TrialRow(Row):
    """One (method, batch size): memory of a few training steps, and their speed when asked for."""

    method: Method
    batch_size: Batch
    seq_len: Positive = None
    mode: Mode
    measured: bool = Field(True, description="False for an estimate (FakeTensorMode trace)")
    predicted: bool = Field(
        False,
        description="estimate: not traced itself but replayed from the event logs of the job's two traced batch "
        "sizes around it (every storage's size interpolated, the step replayed); its peaks within 0.1% of a trace's",
    )
    oom: bool = False
    oom_message: Message = None
    error: Message = None
    estimate_device: Text = Field(None, description="estimate mode: the device model the trace assumed")
    peak_bytes: Bytes = Field(None, description="peak allocated over the run, optimizer steps included")
    first_step_peak_bytes: Bytes = Field(None, description="peak of the first step, before optimizer state exists")
    activation_bytes: Bytes = Field(None, description="bytes saved for backward in the first step")
    tracked_peak_bytes: Bytes = None
    reserved_bytes: Bytes = Field(None, description="cuda: peak reserved by the caching allocator")
    alloc_retries: Count = Field(
        None, description="cuda: allocations the caching allocator retried after freeing its cache"
    )
    allocator_ooms: Count = Field(None, description="cuda: out-of-memory errors the caching allocator raised")
    workspace_bytes: Bytes = Field(None, description="estimate on a CUDA model: cuBLAS workspaces in the peaks")
    process_device_bytes: Bytes = None
    host_bytes: Bytes = Field(
        None,
        description="offload: bytes of saved tensors the last measured forward kept in host memory instead of on the "
        "device, one copy per saved tensor "
        "(cuda: copied to pinned host memory; estimate: what the modelled device would copy out, not device memory). "
        "cpu: 0, the saved tensors are host memory already and nothing moves (they count in activation_bytes). "
        "None: the method does not offload",
    )
    breakdown: ByteMap | None = Field(None, description=f"bytes at the run's peak by {CATEGORIES}")
    first_step_breakdown: ByteMap | None = None
    untracked_bytes: Annotated[int | None, Check(-MAX_INT, MAX_INT)] = Field(
        None,
        description="of peak_bytes, what the storage tracker did not see, counted in breakdown's 'other' so the "
        "breakdown sums to peak_bytes: an estimate's cuBLAS workspaces; on cuda/cpu what the allocator held that no "
        "op handed the dispatcher (kernels' own scratch, workspaces). Negative if the allocator peaked below the tracker",
    )
    first_step_untracked_bytes: Annotated[int | None, Check(-MAX_INT, MAX_INT)] = Field(
        None, description="untracked_bytes of first_step_peak_bytes, in first_step_breakdown's 'other'"
    )
    optimizer: Text = Field(
        None, description="the spec's optimizer (adamw, adamw-foreach, adamw-fused, adamw-single, adam, sgd, adafactor)"
    )
    optimizer_impl: Text = Field(
        None,
        description="the implementation that ran: single (a loop over parameters), foreach (multi-tensor, holds "
        "parameter-sized temporaries) or fused (one kernel); adamw/adam/sgd resolve to torch's default for the "
        "device (foreach on cuda and on an estimate of a CUDA device, single on cpu). A row without it ran "
        "adamw-single (the profiler before issue 29)",
    )
    step_time_s: Seconds = Field(None, description="median over the timed steps, after warm-up")
    step_time_min_s: Seconds = None
    step_time_max_s: Seconds = None
    tokens_per_s: Rate = None
    samples_per_s: Rate = None
    timed_steps: Count = None
    strategy: Strategy = Field(None, description="parallel strategy: ddp or fsdp (None: one device)")
    world_size: WorldSize = Field(
        None,
        description="ranks; memory fields and batch_size are per rank, tokens_per_s and samples_per_s "
        "are of all ranks together (world_size x batch_size per step)",
    )
    rank: Annotated[int | None, Check(0, MAX_RANKS - 1)] = Field(
        None, description="estimate: the rank traced (0, which holds the largest shard); memory fields describe it"
    )
    ranks: Annotated[list[RankPeak] | None, Check(items=MAX_RANKS)] = Field(
        None, description="measured ddp/fsdp: every rank; peak_bytes and step_time_s are the max over them"
    )
    peak_spread_bytes: Bytes = Field(None, description="measured ddp/fsdp: max - min of the ranks' peak_bytes")
    compiled: bool = Field(
        False,
        description="the step's model ran under torch.compile (spec compile: true); step times and peaks are of "
        "the compiled step, measured after the warm-up that compiled it",
    )
    compile_backend: Text = Field(None, description="compiled: the torch.compile backend (inductor)")
    compile_s: Seconds = Field(
        None,
        description="compiled: wall time of the compiling warm-up (forward and backward until a step compiled "
        "nothing new; it includes that last, already compiled, step)",
    )
    compile_graphs: Count = Field(
        None,
        description="compiled: graphs Dynamo compiled for the step; more than one means graph breaks or "
        "recompiles (a patched model compiles a second time in the second warm-up step, for the gradient-norm "
        "tables its first step created)",
    )
    compile_graph_breaks: Count = Field(
        None, description="compiled: graph breaks Dynamo hit while compiling the step (0: the step is whole graphs)"
    )
    recompiles_measured: Count = Field(
        None, description="compiled: graphs compiled during the measured steps (0: no compilation in what was measured)"
    )

    @property
    def fits(self) -> bool:
        return not self.oom and not self.error and self.peak_bytes is not None


class MaxBatchRow(Row):
    method: Method
    max_batch_size: Annotated[int, Check(0, batch=True)] = Field(description="0 when even batch 1 does not fit")
    mode: Mode
    seq_len: Positive = None
    limit_bytes: FloatBytes = None
    headroom: Fraction = None
    capped_at_upper: bool = False
    probes: Annotated[list[Probe], Check(items=MAX_PROBES)] = []


class FidelityRow(Row):
    """One replaced layer: the sampled weight gradient against the exact one on the same batch."""

    method: Method
    batch_size: Batch
    layer: Key
    relative_error: NonNegative = None
    relative_bias: NonNegative = None
    relative_variance: NonNegative = None
    draws: Annotated[int, Check(1, MAX_INT)]
    exact_norm: NonNegative = None


class Evaluation(Checked):
    epoch: Annotated[int, Check(0, MAX_INT)]
    step: Annotated[int, Check(0, MAX_INT)]
    accuracy: Annotated[float, Check(0, 1)]
    loss: Finite = None  # None: the held-out loss overflowed (fp16), though the training loss did not


class ConvergenceRow(Row):
    """A real fine-tuning run of one method: loss curve, held-out accuracy, time and memory."""

    method: Method
    mode: Mode
    seed: Count = None
    measured: bool = True
    epochs: Count = None
    steps: Count = None
    batch_size: Annotated[int | None, Check(1, batch=True)] = None
    seq_len: Positive = None
    lr: NonNegative = None
    losses: Annotated[list[Annotated[float, Check()]], Check(items=MAX_LIST)] = []
    evals: Annotated[list[Evaluation], Check(items=MAX_LIST)] = []
    accuracy: Fraction = None
    val_loss: Finite = None
    train_time_s: Seconds = None
    tokens_per_s: Rate = None
    peak_bytes: Bytes = None
    peak_measured_over: Text = None
    data: Annotated[str | None, Check(chars=4096)] = Field(None, description="the TSV trained on, on the worker's disk")
    train_examples: Count = None
    val_examples: Count = None
    norm_source: Text = None
    cache_bytes: Bytes = Field(None, description="the sampler's per-example norm cache")
    cache_examples_seen: Count = None


class ModuleBytes(Checked):
    module: Key = Field(description="module path in the model ('' is the model itself)")
    type: Key = ""
    bytes: Annotated[int, Check(0, MAX_INT)]
    ops: ByteMap = Field(default_factory=dict, description="bytes by the op that saved them")


class AttributionRow(Row):
    """Where the first training step's saved activations live: bytes alive for backward, by module
    path and by the op that saved them (each storage counted once, for its first saver)."""

    method: Method
    batch_size: Batch
    mode: Mode
    oom: bool = False
    oom_message: Message = None
    error: Message = None
    estimate_device: Text = None
    total_bytes: Bytes = Field(None, description="sum over modules, each storage rounded to the allocator block")
    raw_bytes: Bytes = Field(None, description="the same storages unrounded: the trial row's activation_bytes")
    block_bytes: Bytes = None
    peak_activation_bytes: Bytes = Field(None, description="of them, alive at the step's peak")
    module_count: Count = None
    modules: Annotated[list[ModuleBytes], Check(items=MAX_MODULES)] = Field(
        default_factory=list, description="largest first, then '(other)'"
    )
    ops: ByteMap = Field(default_factory=dict)
    groups: Annotated[list[ModuleBytes], Check(items=MAX_MODULES)] = Field(
        default_factory=list, description="module paths with layer indices folded (encoder.block.*.layer.0...)"
    )


class Environment(Row):
    """What the rows were measured on."""

    mode: Mode | None = None
    device_name: Annotated[str | None, Check(chars=128)] = None  # the results column is 128 wide
    device_total_bytes: Bytes = None
    torch_version: Text = None
    transformers_version: Text = None
    peft_version: Text = None
    cuda_version: Text = None
    driver: Text = Field(None, description="cuda: the NVIDIA driver's version")
    wtacrs_kernels: Text = Field(
        None, description="which implementation the ops' kernels are (triton, or the reference)"
    )
    host: Text = None
    cpu_count: Count = None
    torch_threads: Count = None
    git_revision: Text = None
    allocator_conf: Text = Field(None, description="PYTORCH_CUDA_ALLOC_CONF (or PYTORCH_ALLOC_CONF) as the run saw it")
    optimizer: Text = Field(None, description="the spec's optimizer")
    optimizer_impl: Text = Field(None, description="what it ran as on this device: single, foreach or fused")
