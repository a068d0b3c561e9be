"""The job spec: one pydantic model shared by the CLI, the worker and the API (no torch here)."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from . import identity
from .measurements import MEASUREMENTS
from .methods import MEFT_FAMILIES, parse_method
from .presets import FAMILIES, PRESETS, PRETRAINED

# Bounds on what one spec may ask for. Every list and string a client sends has one, so neither
# validating a spec nor running it can grow without limit; a larger study is several jobs.
MAX_METHODS = 32
MAX_BATCH_SIZES = 64
MAX_BATCH = 1_000_000
MAX_MEASUREMENTS = 16  # repeats are dropped, so a little slack over the registry's size
MAX_NAME = 64  # method names land in a 64-character database column
MAX_OVERRIDES = 64
MAX_EXAMPLES = 10_000_000  # GLUE SST-2 has 67k rows
# An override that validates but could never run: building a model is Python work per layer (a
# 300-layer trace takes a minute), so 10^6 layers would hold a worker for days. The deepest
# published models have under 130 layers. Integers in a config are sizes, ids and counts.
MAX_LAYERS = 256
LAYER_KEYS = ("num_hidden_layers", "num_layers", "num_decoder_layers", "num_encoder_layers", "n_layer")
MAX_OVERRIDE_INT = 2**31 - 1
Name = Annotated[str, StringConstraints(max_length=MAX_NAME)]
# The optimizers a spec may name; adamw, adam and sgd run torch's default implementation for the device
OPTIMIZERS = ("adamw", "adamw-foreach", "adamw-fused", "adamw-single", "adam", "sgd", "adafactor")


class Strict(BaseModel):
    """Unknown keys are errors, so a typo never silently falls back to a default. They are named
    in one error: pydantic's own check makes one error per key, and building 40 000 of them for a
    hostile body took longer than everything else the server does with it."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data):
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                names = ", ".join(repr(str(k)[:64]) for k in unknown[:5])
                raise ValueError(f"unknown field {names}{more}; allowed fields: {', '.join(cls.model_fields)}")
        return data


class ModelSpec(Strict):
    family: Name
    overrides: dict[Name, int | float | Name | bool] = Field(default_factory=dict, max_length=MAX_OVERRIDES)

    @field_validator("overrides", mode="before")
    @classmethod
    def _few_overrides(cls, v):
        # before the values are checked: pydantic checks a dict's length after validating every item
        if isinstance(v, dict) and len(v) > MAX_OVERRIDES:
            raise ValueError(f"{len(v)} overrides; at most {MAX_OVERRIDES} are allowed")
        return v

    @field_validator("overrides")
    @classmethod
    def _buildable(cls, v: dict) -> dict:
        for key, value in v.items():
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            if key in LAYER_KEYS and not 0 <= value <= MAX_LAYERS:
                raise ValueError(f"override {key}={value}: at most {MAX_LAYERS} layers can be built and traced")
            if abs(value) > MAX_OVERRIDE_INT:
                raise ValueError(f"override {key}={value}: integers in a model config are at most {MAX_OVERRIDE_INT}")
        return v

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        if v not in FAMILIES:
            raise ValueError(f"unknown model family {v!r}; known families: {sorted(FAMILIES)}")
        return v


class MaxBatchSpec(Strict):
    upper: int = Field(4096, ge=1, le=MAX_BATCH, description="never probe beyond this batch size")
    headroom: float = Field(0.0, ge=0.0, lt=0.9, description="fraction of device memory kept free")


class ConvergenceSpec(Strict):
    """A real fine-tuning run per method: loss curve, held-out accuracy, wall time, peak memory."""

    data: str | None = Field(
        None,
        max_length=4096,
        description="TSV with a header and sentence<TAB>label rows, on the worker's disk; "
        "default: GLUE SST-2 train (../shared/data/sst2/train.tsv next to the checkout, or $WTACRS_SST2_TSV)",
    )
    train_examples: int | None = Field(
        2000, ge=1, le=MAX_EXAMPLES, description="training examples used (None: all that remain)"
    )
    val_examples: int = Field(1000, ge=1, le=MAX_EXAMPLES, description="held out from the same file with split_seed")
    split_seed: int = Field(0, ge=0, le=2**32 - 1, description="fixed across runs, so every seed sees one split")
    epochs: int = Field(2, ge=1, le=100)
    batch_size: int = Field(16, ge=1, le=4096)
    adapter_lr: float = Field(
        5e-4, gt=0, allow_inf_nan=False, description="learning rate for LoRA/VeLoRA methods (spec.lr for the rest)"
    )
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="linear warm-up, then linear decay to 0")
    weight_decay: float = Field(0.01, ge=0, lt=1)
    norm_source: Literal["running", "example", "activation"] = Field(
        "running", description="gradient-norm factor for sampling methods; 'example' is the paper's per-example cache"
    )


# Measurements a sharded run cannot make: they read one model's exact values (fidelity), train real
# weights in one process (convergence) or attribute one device's saved activations to modules.
NOT_SHARDED = {
    "fidelity": "compares one model's exact and sampled gradients",
    "convergence": "fine-tunes real weights in one process",
    "memory_attribution": "attributes one device's saved activations to modules",
}
MAX_CPU_RANKS = 16  # device 'cpu' starts one process per rank on the worker's host

# What `compile: true` applies to: the trials (peak memory, throughput, the max-batch probes). The
# other measurements say why they run no compiled step, and a spec asking for one is refused.
NOT_COMPILED = {
    "fidelity": "compares the estimator's sampled gradients with exact ones; compiling changes neither",
    "convergence": "fine-tunes in its own training loop, which does not compile",
    "memory_attribution": "attributes saved tensors to the modules that saved them, and a compiled graph has no "
    "module boundaries to attribute to",
}


class ParallelSpec(Strict):
    """How the step is spread over ranks. Every number a row reports is per rank (one GPU's), and
    batch sizes are per-rank micro-batches; `estimate` traces rank 0, `cpu`/`cuda` launch every rank."""

    strategy: Literal["none", "ddp", "fsdp"] = Field(
        "none",
        description="none: one device; ddp: DistributedDataParallel (every rank holds the whole model, "
        "gradients in the reducer's buckets, gradient_as_bucket_view); fsdp: FSDP2 fully_shard per "
        "transformer block plus the root (parameters, gradients and optimizer state sharded). The method "
        "(LoRA, WTA-CRS, checkpointing) is applied before wrapping. world_size 1 with ddp/fsdp is one "
        "device with the wrapper's own buffers (nothing is sharded)",
    )
    world_size: int = Field(
        1,
        ge=1,
        le=1024,
        description="ranks (GPUs). estimate: any size, rank 0 is traced in one process; cpu: that many "
        f"processes on the worker (at most {MAX_CPU_RANKS}); cuda: one process per GPU, and a worker with "
        "fewer GPUs than world_size never claims the job (it waits for one with enough, and says so in waiting_for)",
    )
    reshard_after_forward: bool | None = Field(
        None, description="fsdp only: free unsharded parameters after each block's forward (None: FSDP's default, True)"
    )
    mixed_precision: Literal["bf16"] | None = Field(
        None,
        description="fsdp only: MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32): fp32 sharded master "
        "weights, gradients and optimizer state; parameters all-gathered and computed in bf16 (needs dtype fp32)",
    )

    @model_validator(mode="after")
    def _coherent(self):
        if self.strategy == "none" and self.world_size > 1:
            raise ValueError(
                f"world_size {self.world_size} needs a strategy: 'ddp' or 'fsdp' (strategy 'none' is one device)"
            )
        if self.strategy != "fsdp":
            for name in ("reshard_after_forward", "mixed_precision"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} applies to strategy 'fsdp' only, not {self.strategy!r}")
        return self


class JobSpec(Strict):
    """What to profile."""

    model: Name | ModelSpec
    methods: list[Name] = Field(min_length=1, max_length=MAX_METHODS)
    seq_len: int = Field(ge=1, le=131072)
    batch_sizes: list[int] = Field(default_factory=list, max_length=MAX_BATCH_SIZES)
    dtype: Literal["fp32", "bf16", "fp16", "bf16-weights"] = Field(
        "fp32",
        description="fp32; bf16/fp16: autocast with fp32 weights; bf16-weights: weights (and so gradients "
        "and optimizer state) stored in bf16, no fp32 master copy and no autocast",
    )
    optimizer: Literal[OPTIMIZERS] = Field(
        "adamw",
        description="the optimizer and its implementation. adamw (default) and adam: torch's default for the "
        "device, as a plain torch.optim.AdamW(params) (and the HF Trainer's adamw_torch) gives: foreach on "
        "cuda and on an estimate of a CUDA device (it holds parameter-sized temporaries during the step), "
        "single-tensor on cpu; adamw-foreach, adamw-fused (one kernel, no temporaries) and adamw-single (a loop "
        "over parameters, no temporaries beyond one parameter's) pin the implementation; sgd: momentum 0.9, "
        "torch's default implementation; adafactor: torch.optim.Adafactor, factored second moments (cpu and "
        "cuda only: it reads parameter norms on the host, which an estimate cannot trace). Rows report the "
        "optimizer and optimizer_impl that ran",
    )
    lr: float = Field(5e-5, gt=0, allow_inf_nan=False)
    measurements: list[Name] = Field(
        default_factory=lambda: ["peak_memory", "throughput"], min_length=1, max_length=MAX_MEASUREMENTS
    )
    device: Literal["cuda", "cpu", "estimate"] = "cpu"
    target_memory_gb: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="estimate mode: device memory to fit in (GiB)"
    )
    estimate_device: Literal["cuda-sm90", "cpu"] = Field(
        "cuda-sm90",
        description="estimate mode: whose kernels the trace follows: a CUDA sm90 device (H100/H200: fused "
        "attention and dropout, its allocator's blocks and workspaces) or this host's CPU",
    )
    steps: int = Field(
        5,
        ge=1,
        le=1000,
        description="timed steps per throughput row, after warm-up: the row reports their median and the slowest "
        "and fastest (the dashboards flag fewer than 5, or a spread over 25% of the median)",
    )
    warmup: int = Field(1, ge=0, le=100)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    lora_r: int = Field(8, ge=1, le=1024)
    max_batch: MaxBatchSpec = Field(default_factory=MaxBatchSpec)
    convergence: ConvergenceSpec = Field(default_factory=ConvergenceSpec)
    timeout_s: float = Field(1800, gt=0, le=86400, description="per method, in the child process")
    parallel: ParallelSpec = Field(
        default_factory=ParallelSpec, description="DDP/FSDP over world_size ranks; rows report one rank"
    )
    compile: bool = Field(
        False,
        description="run each training step's model under torch.compile (model = torch.compile(model), "
        "inductor, dynamic=False; the optimizer step stays eager), as many users train. Compilation happens in "
        "warm-up steps before anything is measured (forward and backward until a step compiles nothing new, no "
        "optimizer step, so the first measured step still has no optimizer state); rows report compiled, "
        "compile_s, compile_graphs and compile_graph_breaks. Device cpu or cuda, strategy none; a max-batch search compiles each "
        "probe's batch size anew",
    )

    @field_validator("model")
    @classmethod
    def _known_preset(cls, v):
        if isinstance(v, str) and v not in PRESETS:
            raise ValueError(
                f"unknown model preset {v!r}; presets: {sorted(PRESETS)}; or give {{'family': ..., 'overrides': {{...}}}}"
                f" with a family from {sorted(FAMILIES)}"
            )
        return v

    @field_validator("methods")
    @classmethod
    def _parse_methods(cls, v: list[str]) -> list[str]:
        names = [parse_method(m).name for m in v]
        dupes = sorted(n for n, count in Counter(names).items() if count > 1)
        if dupes:
            raise ValueError(f"methods repeat {dupes}; list each once")
        return names

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, v: list[int]) -> list[int]:
        bad = [b for b in v if b < 1 or b > MAX_BATCH]
        if bad:
            raise ValueError(f"batch_sizes {bad} are outside 1..{MAX_BATCH}")
        return sorted(set(v))

    @field_validator("measurements")
    @classmethod
    def _known_measurements(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in MEASUREMENTS]
        if bad:
            raise ValueError(f"unknown measurements {bad}; allowed: {list(MEASUREMENTS)}")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _consistent(self):
        per_batch = [m for m in self.measurements if MEASUREMENTS[m].per_batch]
        if per_batch and not self.batch_sizes:
            raise ValueError(f"measurements {sorted(per_batch)} need batch_sizes (a list of positive integers)")
        if "convergence" in self.measurements:
            if not (isinstance(self.model, str) and self.model in PRETRAINED):
                raise ValueError(
                    f"measurement 'convergence' fine-tunes real pretrained weights with their tokenizer; "
                    f"model {self.model_name!r} has none. Models with weights: {sorted(PRETRAINED)}"
                )
            if self.dtype == "bf16-weights":
                raise ValueError(
                    "measurement 'convergence' does not support dtype 'bf16-weights'; "
                    "use dtype 'fp32', 'bf16' or 'fp16' (autocast)"
                )
        family = PRESETS[self.model][0] if isinstance(self.model, str) else self.model.family
        meft = [m for m in self.methods if parse_method(m).meft]
        if meft and family not in MEFT_FAMILIES:
            raise ValueError(
                f"methods {meft} (MEFT) support the families {list(MEFT_FAMILIES)}; not {family!r}: T5's first "
                "layer computes the position bias the others reuse and its decoder reads the encoder output, "
                "which breaks the reversible coupling, and GPT-2 has no MEFT record yet"
            )
        if self.device == "estimate":
            parsed = [(m, parse_method(m)) for m in self.methods]
            sampled_selective = [m for m, p in parsed if p.sampler and p.selective_checkpointing]
            if sampled_selective:
                raise ValueError(
                    f"methods {sampled_selective} do not trace yet: selective checkpointing's recomputation must "
                    "issue the forward's ops in order, and the row sampling's differs under FakeTensorMode; "
                    "profile them on device 'cpu' or 'cuda', or estimate 'selective-checkpointing' without a sampler"
                )
            untraceable = [m for m in self.methods if parse_method(m).adapter == "velora"]
            if untraceable:
                raise ValueError(
                    f"methods {untraceable} read tensor values on the host (peft VeLoRA), which FakeTensorMode "
                    "cannot trace; profile them on device 'cpu' or 'cuda'"
                )
            if self.optimizer == "adafactor":
                raise ValueError(
                    "optimizer 'adafactor' cannot be estimated: torch's Adafactor reads parameter and update "
                    "norms on the host (.item()) every step, which FakeTensorMode cannot trace; measure it on "
                    "device 'cpu' or 'cuda', or estimate with an adamw variant"
                )
            for name in self.measurements:
                if not MEASUREMENTS[name].estimate:
                    raise ValueError(
                        f"device 'estimate' {MEASUREMENTS[name].why_not_estimate}; "
                        f"drop {name!r} or use device 'cpu'/'cuda'"
                    )
            if self.target_memory_gb is None and "max_batch_size" in self.measurements:
                raise ValueError("device 'estimate' with max_batch_size needs target_memory_gb (e.g. 80)")
        if self.device == "cpu" and self.target_memory_gb is None and "max_batch_size" in self.measurements:
            raise ValueError(
                "device 'cpu' with max_batch_size needs target_memory_gb: host memory has no hard limit "
                "to probe against"
            )
        if self.parallel.strategy != "none":
            self._check_parallel()
        if self.compile:
            self._check_compile()
        if self.dtype == "fp16" and self.device == "cpu":
            raise ValueError("dtype 'fp16' (autocast) is not supported on device 'cpu'; use 'bf16' or 'fp32'")
        return self

    def _check_parallel(self) -> None:
        p = self.parallel
        for name in self.measurements:
            if name in NOT_SHARDED:
                raise ValueError(
                    f"measurement {name!r} cannot run with parallel strategy {p.strategy!r}: it "
                    f"{NOT_SHARDED[name]}; drop it or use strategy 'none'"
                )
        if p.mixed_precision == "bf16" and self.dtype != "fp32":
            raise ValueError(
                f"parallel.mixed_precision 'bf16' keeps fp32 master weights and computes in bf16, so it needs "
                f"dtype 'fp32', not {self.dtype!r} (for bf16 storage use dtype 'bf16-weights' without mixed_precision)"
            )
        if self.device == "cpu" and p.world_size > MAX_CPU_RANKS:
            raise ValueError(
                f"device 'cpu' starts one process per rank; world_size {p.world_size} is over {MAX_CPU_RANKS}: "
                "use device 'estimate' for larger worlds"
            )

    def _check_compile(self) -> None:
        if self.device == "estimate":
            raise ValueError(
                "compile: true cannot be estimated: device 'estimate' traces the eager step op by op under "
                "FakeTensorMode, and a compiled step's memory is what inductor fuses away and what AOTAutograd's "
                "partitioner saves or recomputes for backward, which that trace does not see; measure compiled "
                "steps on device 'cpu' or 'cuda' (the same spec without compile estimates the eager step)"
            )
        if self.parallel.strategy != "none":
            raise ValueError(
                f"compile: true with parallel strategy {self.parallel.strategy!r} is not supported: the profiler "
                "compiles a single-device model, and a DDP/FSDP step compiles the wrapped model (DDP's bucket-wise "
                "graph splitting, FSDP2's traced collectives), which it does not build; use strategy 'none' or "
                "compile: false"
            )
        for name in self.measurements:
            if name in NOT_COMPILED:
                raise ValueError(
                    f"measurement {name!r} runs no compiled step: it {NOT_COMPILED[name]}; drop it or set compile: false"
                )

    @property
    def model_name(self) -> str:
        """The preset or the family (for messages; results group by `model_key`)."""
        return self.model if isinstance(self.model, str) else self.model.family

    @property
    def model_key(self) -> str:
        """What results group by: the preset, or the family with its canonical overrides."""
        return identity.of_spec_model(self._model_json())[0]

    @property
    def model_label(self) -> str:
        """The model as pages name it, e.g. `bert (hidden 256, 4 layers)`."""
        return identity.of_spec_model(self._model_json())[1]

    def _model_json(self) -> str | dict:
        """The model as stored specs hold it (what migration 0005 keys), without dumping the whole spec."""
        return self.model if isinstance(self.model, str) else self.model.model_dump(mode="json")
