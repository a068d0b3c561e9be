"""DDP/FSDP trials: the spec's `parallel`, rank 0's trace under a fake process group, and the same
trial measured by 2 gloo ranks on this CPU."""

import pytest
import torch
from pydantic import ValidationError

from contract.methods import parse_method
from contract.spec import JobSpec
from profiler.producers import parallel, sharding
from profiler.producers.ranks import measured_rows
from profiler.runner import run_job
from profiler.trial.zoo import build_model

METHODS = ["full", "wtacrs@0.3", "lora"]
BASE = {"seq_len": 32, "batch_sizes": [4], "measurements": ["peak_memory"], "steps": 1, "warmup": 0}


def spec(**kw) -> JobSpec:
    return JobSpec.model_validate({"model": "llama-tiny", "methods": ["full"], **BASE, **kw})


# -- the spec ------------------------------------------------------------------------------------


def test_default_is_one_device():
    p = spec().parallel
    assert (p.strategy, p.world_size, p.reshard_after_forward, p.mixed_precision) == ("none", 1, None, None)


@pytest.mark.parametrize(
    "parallel, extra, message",
    [
        ({"world_size": 8}, {}, "needs a strategy"),
        ({"strategy": "ddp", "world_size": 2, "reshard_after_forward": False}, {}, "fsdp' only"),
        ({"strategy": "ddp", "world_size": 2, "mixed_precision": "bf16"}, {}, "fsdp' only"),
        (
            {"strategy": "fsdp", "world_size": 2, "mixed_precision": "bf16"},
            {"dtype": "bf16-weights"},
            "needs dtype 'fp32'",
        ),
        ({"strategy": "fsdp", "world_size": 2, "mixed_precision": "fp16"}, {}, "mixed_precision"),
        ({"strategy": "fsdp", "world_size": 0}, {}, "world_size"),
        ({"strategy": "fsdp", "world_size": 1025}, {}, "world_size"),
        ({"strategy": "fsdp", "world_size": 32}, {"device": "cpu"}, "one process per rank"),
        ({"strategy": "fsdp", "world_size": 2, "zero": 3}, {}, "unknown field 'zero'"),
        ({"strategy": "fsdp", "world_size": 2}, {"measurements": ["peak_memory", "fidelity"]}, "'fidelity' cannot run"),
        (
            {"strategy": "ddp", "world_size": 2},
            {"measurements": ["memory_attribution"], "device": "estimate"},
            "'memory_attribution' cannot run",
        ),
    ],
)
def test_bad_parallel_specs_say_what_is_wrong(parallel, extra, message):
    with pytest.raises(ValidationError, match=message):
        spec(parallel=parallel, **extra)


def test_convergence_is_refused_when_sharded():
    with pytest.raises(ValidationError, match="'convergence' cannot run with parallel strategy 'fsdp'"):
        JobSpec.model_validate(
            {"model": "all-minilm-l6-v2", "methods": ["full"], "seq_len": 32, "measurements": ["convergence"],
             "parallel": {"strategy": "fsdp", "world_size": 2}}
        )  # fmt: skip


def test_good_parallel_specs():
    assert spec(parallel={"strategy": "fsdp", "world_size": 1}).parallel.world_size == 1  # one device, FSDP's buffers
    s = spec(device="estimate", parallel={"strategy": "fsdp", "world_size": 1024, "mixed_precision": "bf16"})
    assert s.parallel.mixed_precision == "bf16"
    assert spec(device="cuda", parallel={"strategy": "ddp", "world_size": 64}).parallel.world_size == 64


# -- the wrapping --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, expected", [("llama-tiny", ["model.layers.0", "model.layers.1"]), ("t5-tiny", ["encoder.block.0"])]
)
def test_blocks_are_the_outermost_layer_list_items(model, expected):
    s = JobSpec.model_validate({"model": model, "methods": ["full"], **BASE})
    _, m = build_model(s)
    names = {id(mod): n for n, mod in m.named_modules()}
    found = [names[id(b)] for b in sharding.blocks(m)]
    assert found[: len(expected)] == expected
    assert not any(".layer." in n for n in found)  # a T5 block's own sub-layer list stays inside it


def test_no_unsharded_weight_outlives_fsdp_on_a_wtacrs_model():
    """apply_wtacrs keeps each replaced nn.Linear for remove_wtacrs; when it also kept the Parameters,
    fully_shard (which swaps only registered ones) left every rank holding each replaced layer's whole
    weight: 1.8 GiB per rank on llama-1b over 8 ranks. Every tensor reachable from the model is a shard."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.tensor import DTensor

    from profiler.trial.build import build_trial
    from wtacrs.patch import _STATE

    s = spec(device="estimate", methods=["wtacrs@0.3"], parallel={"strategy": "fsdp", "world_size": 2})
    with sharding.fake_process_group(2) as mesh, FakeTensorMode(allow_non_fake_inputs=True) as fake:
        trial = build_trial(s, parse_method("wtacrs@0.3"), 2, torch.device("cpu"), fake)
        model = sharding.wrap(trial.model, s, torch.device("cpu"), mesh, traced=True)
        patched = next(m for m in model.modules() if hasattr(m, _STATE))
        kept = [old for _, old, _ in getattr(patched, _STATE)["replaced"]]
        assert kept and all(p is None for old in kept for p in old._parameters.values())
        assert all(isinstance(p, DTensor) for p in model.parameters())


def estimate(method: str, strategy: str, world_size: int, **kw):
    s = spec(device="estimate", parallel={"strategy": strategy, "world_size": world_size}, **kw)
    return parallel.trial_row(s, parse_method(method), 4)


def test_fsdp_shards_parameters_gradients_and_optimizer_state():
    rows = {n: estimate("full", "fsdp", n, estimate_device="cpu") for n in (1, 2, 4)}
    assert not torch.distributed.is_initialized()  # the fake group is gone after each trace
    for n, row in rows.items():
        assert row.error is None and (row.strategy, row.world_size, row.rank) == ("fsdp", n, 0)
    one, four = rows[1].breakdown, rows[4].breakdown
    # AdamW's two moments per sharded parameter: a quarter of the state on 4 ranks (padding aside)
    assert four["optimizer_state"] == pytest.approx(one["optimizer_state"] / 4, rel=0.02)
    assert rows[1].peak_bytes > rows[2].peak_bytes > rows[4].peak_bytes
    ddp = [estimate("full", "ddp", n, estimate_device="cpu") for n in (2, 8)]
    assert ddp[0].peak_bytes == ddp[1].peak_bytes  # every DDP rank holds everything, whatever the world


def test_estimate_of_a_cuda_rank_with_mixed_precision_and_checkpointing():
    s = spec(
        device="estimate",
        methods=["checkpointing"],
        parallel={"strategy": "fsdp", "world_size": 8, "mixed_precision": "bf16", "reshard_after_forward": False},
    )
    row = parallel.trial_row(s, parse_method("checkpointing"), 4)
    assert row.error is None and row.estimate_device == "cuda-sm90" and row.workspace_bytes > 0
    assert row.peak_bytes >= row.first_step_peak_bytes > row.workspace_bytes


def test_max_batch_per_rank_through_the_runner():
    s = spec(
        methods=["full", "wtacrs@0.3"],
        device="estimate",
        batch_sizes=[2],
        measurements=["peak_memory", "max_batch_size"],
        target_memory_gb=0.1,
        max_batch={"upper": 64},
        parallel={"strategy": "fsdp", "world_size": 4},
    )
    result = run_job(s, isolate=False)
    assert result.status == "succeeded", result.errors
    assert all(r.strategy == "fsdp" and r.world_size == 4 for r in result.results)
    full, wta = result.max_batch
    assert 0 < full.max_batch_size <= wta.max_batch_size


# -- measured ranks against rank 0's trace --------------------------------------------------------


def _gloo_reduce_scatter_allowance(model: str) -> int:
    """gloo's reduce_scatter_tensor allocates 1.5x its input through PyTorch's allocator (a 4 MB
    input peaks at 6 MB, and when its worker thread lets go of it varies run to run); NCCL's
    allocates nothing there, and the fake group's nothing at all. So a CPU rank of FSDP may peak
    above the trace by up to 1.5x the largest FSDP group's flat gradient (4 bytes a parameter):
    the root group for both tiny models (bert-tiny's 30522 x 128 word embedding)."""
    _, m = build_model(JobSpec.model_validate({"model": model, "methods": ["full"], **BASE}))
    in_blocks = {id(p) for b in sharding.blocks(m) for p in b.parameters()}
    groups = [sum(p.numel() for p in b.parameters()) for b in sharding.blocks(m)]
    groups.append(sum(p.numel() for p in m.parameters() if id(p) not in in_blocks))
    return int(1.5 * 4 * max(groups))


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, strategy", [("llama-tiny", "fsdp"), ("bert-tiny", "fsdp"), ("llama-tiny", "ddp"), ("bert-tiny", "ddp")]
)
def test_measured_ranks_match_the_trace_of_rank_0(model, strategy):
    kw = {"model": model, "methods": METHODS, "parallel": {"strategy": strategy, "world_size": 2}}
    measured = measured_rows(spec(device="cpu", **kw), [parse_method(m) for m in METHODS], 4, throughput=False)
    reduce_scatter = _gloo_reduce_scatter_allowance(model) if strategy == "fsdp" else 0
    for m in measured:
        assert m.error is None and not m.oom, m
        assert m.measured and m.mode == "cpu" and [r.rank for r in m.ranks] == [0, 1]
        assert m.peak_bytes == max(r.peak_bytes for r in m.ranks) and m.peak_spread_bytes >= 0
        e = parallel.trial_row(spec(device="estimate", estimate_device="cpu", **kw), parse_method(m.method), 4)
        # DDP rebuilds its buckets before the second step (the trace keeps the first set: rebuilding
        # reads a broadcast back in C++). Under load, gloo's worker thread sometimes still holds the
        # old set through the last all-reduce's work when the new one is made: seen once, +1 set exactly
        rebuilt = e.breakdown["gradients"] if strategy == "ddp" else 0  # the buckets (gradient_as_bucket_view)
        # and gloo's first all-reduce sometimes lands about 0.8 MB of its own working memory in the
        # first step (the same for every method and model size here, so not ours; NCCL and the
        # fake group allocate none): seen intermittently on the 2-core VM, bounded by 1 MiB
        gloo_first = 2**20 if strategy == "ddp" else 0
        first = reduce_scatter + gloo_first
        for key, allowance in (("first_step_peak_bytes", first), ("peak_bytes", first + rebuilt)):
            got, want = getattr(e, key), getattr(m, key)
            # within 1% (the trace misses the batch's token ids, 2 KiB), but for gloo's own buffers above
            assert -0.01 * want < want - got <= 0.01 * want + allowance, (key, m.method, want, got, allowance)


@pytest.mark.slow
def test_measured_row_through_trial_row_with_throughput():
    s = spec(
        model="bert-tiny",
        device="cpu",
        measurements=["peak_memory", "throughput"],
        parallel={"strategy": "ddp", "world_size": 2},
    )
    result = run_job(s, isolate=False)
    assert result.status == "succeeded", result.errors
    (row,) = result.results
    assert row.strategy == "ddp" and row.world_size == 2 and len(row.ranks) == 2 and row.rank is None
    assert row.step_time_s == max(r.step_time_s for r in row.ranks)
    assert row.tokens_per_s == pytest.approx(2 * 4 * 32 / row.step_time_s)  # both ranks' tokens


@pytest.mark.slow
def test_a_failing_rank_is_the_rows_error():
    s = spec(device="cpu", seq_len=4096, parallel={"strategy": "fsdp", "world_size": 2})  # over llama-tiny's positions
    (row,) = measured_rows(s, [parse_method("full")], 4)
    assert row.error and row.error.startswith("rank ") and "positions" in row.error


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices for 2 NCCL ranks")
def test_cuda_ranks_with_nccl():
    s = spec(device="cuda", parallel={"strategy": "fsdp", "world_size": 2})
    (row,) = measured_rows(s, [parse_method("full")], 4)
    assert row.error is None and row.mode == "cuda" and len(row.ranks) == 2
    e = parallel.trial_row(
        spec(device="estimate", parallel={"strategy": "fsdp", "world_size": 2}), parse_method("full"), 4
    )
    assert e.peak_bytes == pytest.approx(row.peak_bytes, rel=0.05)


def _rank_check(rank: int, port: int, seed: int, out) -> None:
    import datetime

    import torch.distributed as dist

    from profiler.producers.ranks import same_model_on_every_rank

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )
    try:
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        same_model_on_every_rank(model, torch.device("cpu"))
        out.put((rank, None))
    except RuntimeError as err:
        out.put((rank, str(err)))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("same", [True, False])
def test_ranks_that_built_different_models_are_refused(same):
    """DDP skips its start-up broadcast and FSDP shards each rank's own copy: the measured ranks
    check that one seed built one model everywhere, which is what makes the replicas one."""
    import multiprocessing

    from profiler.producers.ranks import _free_port

    ctx = multiprocessing.get_context("spawn")
    out, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_rank_check, args=(r, port, 0 if same or r == 0 else 1, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    if same:
        assert results == {0: None, 1: None}
    else:
        assert all(e and e.startswith("the ranks built different models") for e in results.values()), results
