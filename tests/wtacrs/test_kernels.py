"""The fused Triton kernels (`wtacrs.kernels`) against the PyTorch reference of each custom op.

On any machine: each kernel runs in Triton's interpreter on CPU tensors. Triton chooses between
interpreting and compiling when it decorates a function, i.e. at import, for the whole process
(its own library functions included), so the `check_*` functions below run in one worker
process started with TRITON_INTERPRET=1; each test sends it one check and fails with the
worker's traceback. Bitwise where the arithmetic is the reference's (ReLU, masked gradient,
dropout given its mask, the scaled gather); within a bound derived from the dtype and the
summation length where only the order of a sum differs (row norms, the plan's scales, the
weight-gradient matmul). Dropout's random stream is Philox, not torch's: its mask is checked
statistically. Plus a compile of every kernel for sm_90 with Triton's real compiler (no GPU
needed), which catches what the interpreter forgives.

On a GPU (`cuda` marker): the registered ops with WTACRS_TRITON=1 against WTACRS_TRITON=0 on
the same inputs, with timings.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wtacrs import linear_ops, savers
from wtacrs.estimator import sampling_plan

ROOT = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(
    not HAS_TRITON, reason="triton is not installed (it is in the dev extra: pip install -e '.[dev]')"
)
DTYPES = ["float32", "bfloat16", "float16"]
U32 = 2.0**-24  # fp32 unit roundoff
UNIT = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


# ---------------------------------------------------------------- the interpreter worker

_WORKER = r"""
import json, sys, traceback
import numpy as np
np.seterr(all="ignore")  # the interpreter also computes the masked-off lanes of a block
from tests.wtacrs import test_kernels as checks
checks._fix_old_interpreter()
for line in sys.stdin:
    request = json.loads(line)
    try:
        getattr(checks, "check_" + request["check"])(**request["kwargs"])
        reply = {"ok": True}
    except BaseException:
        reply = {"ok": False, "error": traceback.format_exc()}
    sys.stdout.write("@@" + json.dumps(reply) + "\n")
    sys.stdout.flush()
"""


def _fix_old_interpreter():
    """Triton < 3.7's interpreter turns a scalar argument (a 1-element array) into a Python int
    with `int(array)`, which NumPy >= 2.4 refuses for arrays that are not 0-d ("only 0-dimensional
    arrays can be converted to Python scalars"): every `range(0, n, BLOCK)` over a kernel argument
    fails. Triton 3.7 squeezes the array first; do the same on older ones. The interpreter only:
    compiled kernels (a GPU) never take this path."""
    import triton

    if tuple(int(p) for p in triton.__version__.split(".")[:2]) >= (3, 7):
        return
    from triton.runtime import interpreter

    patch = interpreter._patch_lang_tensor  # applied at every launch (3.6: in a scope undone after it)

    def patch_and_fix(tensor, *args, **kwargs):
        patch(tensor, *args, **kwargs)
        tensor.__index__ = lambda self: int(self.handle.data.squeeze())  # 3.7's

    interpreter._patch_lang_tensor = patch_and_fix


class _Interpreter:
    def __init__(self):
        env = dict(
            os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        )
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER], cwd=ROOT, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
        )  # fmt: skip

    def __call__(self, check: str, **kwargs):
        if self.proc.poll() is not None:
            pytest.fail(f"the interpreter worker exited ({self.proc.returncode}):\n{self._stderr()}")
        self.proc.stdin.write(json.dumps({"check": check, "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                pytest.fail(f"the interpreter worker died during {check}{kwargs}:\n{self._stderr()}")
            if line.startswith("@@"):
                reply = json.loads(line[2:])
                break
        if not reply["ok"]:
            pytest.fail(f"{check}{kwargs} in Triton's interpreter:\n{reply['error']}", pytrace=False)

    def _stderr(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-4000:]

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.stderr.close()


@pytest.fixture(scope="module")
def interp():
    if not HAS_TRITON:
        pytest.skip("triton is not installed (it is in the dev extra: pip install -e '.[dev]')")
    worker = _Interpreter()
    yield worker
    worker.close()


# ---------------------------------------------------------------- checks (run in the worker)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _special(x: torch.Tensor) -> torch.Tensor:
    """x with -0.0, NaN and the infinities among its first elements."""
    flat = x.reshape(-1)
    for i, v in enumerate([-0.0, float("nan"), float("inf"), float("-inf"), 0.0]):
        if i < flat.numel():
            flat[i] = v
    return x


def _same_bits(got: torch.Tensor, want: torch.Tensor, what: str):
    """Bitwise equal; NaN in the same places (torch itself does not keep NaN payloads)."""
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan), f"{what}: NaN in other places"
    as_int = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[want.dtype]
    g, w = got[~nan].view(as_int), want[~nan].view(as_int)
    bad = (g != w).nonzero().flatten()
    assert bad.numel() == 0, (
        f"{what}: {bad.numel()} of {w.numel()} differ, first at {bad[:5].tolist()}: {got[~nan][bad[:5]]} vs {want[~nan][bad[:5]]}"
    )


def check_relu(dtype: str, n: int):
    from wtacrs.kernels import bits

    x = _special(torch.randn(n, generator=_gen(n)).to(getattr(torch, dtype)))
    y, packed = bits.relu(x)
    ref_y, ref_bits = savers.bit_relu(x)  # CPU: the reference
    _same_bits(y, ref_y, "relu output")
    assert torch.equal(packed, ref_bits), "relu bits"


def check_masked_grad(dtype: str, n: int, scale: float):
    from wtacrs.kernels import bits

    g = _special(torch.randn(n, generator=_gen(n + 1)).to(getattr(torch, dtype)) * 3)
    packed = savers.pack_bits(torch.rand(n, generator=_gen(n + 2)) > 0.4)
    _same_bits(bits.masked_grad(g, packed, scale), savers.masked_grad(g, packed, scale), "masked grad")
    g2 = g.reshape(1, n, 1)  # any shape: bits follow the flattened order
    _same_bits(bits.masked_grad(g2, packed, scale), savers.masked_grad(g2, packed, scale), "masked grad 3-d")


def check_dropout(dtype: str, n: int, p: float):
    from wtacrs.kernels import bits

    dt = getattr(torch, dtype)
    x = _special(torch.randn(n, generator=_gen(n)).to(dt))
    seed = torch.tensor([12345], dtype=torch.int64)
    y, packed = bits.dropout(x, p, seed)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n // 8)
    if n % 8:
        assert int(packed[-1]) >> (n % 8) == 0, "padding bits must be zero (pack_bits' layout)"
    keep = savers.unpack_bits(packed, x.shape)
    # given its mask, the output is the reference's arithmetic, bit for bit
    _same_bits(y, x * keep.to(dt) * (1.0 / (1.0 - p)), "dropout output")
    # same seed, same mask; another seed, another mask
    assert torch.equal(bits.dropout(x, p, seed)[1], packed)
    other = bits.dropout(x, p, torch.tensor([777], dtype=torch.int64))[1]
    assert n < 64 or p == 0.0 or not torch.equal(other, packed)
    if p == 0.0:
        assert keep.all()
    if n >= 4096:  # the keep rate, overall and per bit position, within 5 sigma of 1 - p
        rate = keep.double().mean().item()
        assert abs(rate - (1 - p)) <= 5 * math.sqrt(p * (1 - p) / n), rate
        per_bit = keep[: n - n % 8].reshape(-1, 8).double().mean(0)
        assert ((per_bit - (1 - p)).abs() <= 5 * math.sqrt(p * (1 - p) / (n // 8))).all(), per_bit


def check_gather(x_dtype: str, out_dtype: str, n: int, d: int, k: int, strided: bool):
    from wtacrs.kernels import sampling

    x2 = torch.randn(d, n, generator=_gen(n * d)).to(getattr(torch, x_dtype)).t() if strided else None
    if x2 is None:
        x2 = torch.randn(n, d, generator=_gen(n * d)).to(getattr(torch, x_dtype))
    idx = torch.randint(0, n, (k,), generator=_gen(k), dtype=torch.int32)
    scale = torch.rand(k, generator=_gen(k + 1)) * 3
    dt = getattr(torch, out_dtype)
    want = (x2.index_select(0, idx).float() * scale.unsqueeze(1)).to(dt)  # linear_ops.sample_rows' tail
    _same_bits(sampling.gather_rows(x2, idx, scale, dt), want, "scaled gather")


def _reference_weights(x, tables, factors):
    x2 = x.reshape(-1, x.shape[-1])
    from wtacrs.grad_norm_history import running_factor

    w = torch.linalg.vector_norm(x2, dim=1, dtype=torch.float32)
    g = [running_factor(t, x.shape) for t in tables] + list(factors)
    return w * torch.sqrt(sum(f * f for f in g)) if g else w


def check_row_weights(dtype: str, shape: list[int], n_tables: int, n_factors: int):
    from wtacrs.kernels import sampling

    x = torch.randn(*shape, generator=_gen(sum(shape))).to(getattr(torch, dtype))
    seq, n, d = shape[-2], math.prod(shape[:-1]), shape[-1]
    tables = [torch.rand(seq + t, generator=_gen(t)) + 0.05 for t in range(n_tables)]
    factors = [torch.rand(n, generator=_gen(10 + f)) + 0.1 for f in range(n_factors)]
    got = sampling.row_weights(x.reshape(-1, d), tables, factors, seq)
    want = _reference_weights(x, tables, factors)
    # fp32 sums of positive terms in another order: relative error below (terms) * u32 each
    torch.testing.assert_close(got, want, rtol=4 * (d + seq + n_tables + n_factors + 4) * U32, atol=0.0)


def check_plan(method: str, n: int, k: int, weights: str):
    from wtacrs.kernels import sampling

    g = _gen(n * 31 + k)
    if weights == "zero":
        w = torch.zeros(n)
    elif weights == "heavy":  # a few rows hold most of the mass: winners
        w = torch.rand(n, generator=g) * 0.01
        w[torch.randperm(n, generator=g)[: max(1, k // 3)]] = 10 + torch.rand(max(1, k // 3), generator=g)
    else:
        w = torch.rand(n, generator=g) + 0.01
    u = torch.rand(k, generator=g)
    idx, scale = sampling.plan(w, k, method, u)
    ref_idx, ref_scale = sampling_plan(w, k, method, u=u)
    assert idx.dtype == torch.int32 and scale.dtype == torch.float32
    assert torch.equal(idx.long(), ref_idx), (idx, ref_idx)
    # the total, the prefix sums and the CDF: n-term fp32 sums in another order
    torch.testing.assert_close(scale, ref_scale, rtol=8 * (n + k) * U32, atol=1e-30)
    if weights == "heavy" and method == "wta":
        assert (scale == 1.0).sum() >= 1, "the heavy rows must be winners (scale 1)"


def check_sample_rows(dtype: str, shape: list[int], k: int, method: str, keep_rows: bool, out_dtype: str):
    from wtacrs.kernels import sampling

    x = torch.randn(*shape, generator=_gen(sum(shape) + k)).to(getattr(torch, dtype))
    tables = [torch.rand(shape[-2] + 2, generator=_gen(k)) + 0.1] if len(shape) >= 3 else []
    u = torch.rand(k, generator=_gen(k + 5))
    args = (x, tables, [], u, k, method, keep_rows, getattr(torch, out_dtype))
    idx, scale, kept = sampling.sample_rows(*args)
    ref_idx, ref_scale, ref_kept = linear_ops.sample_rows(*args)  # CPU: the reference
    assert torch.equal(idx, ref_idx)
    n = math.prod(shape[:-1])
    rtol = 8 * (n + k + shape[-1]) * U32
    torch.testing.assert_close(scale, ref_scale, rtol=rtol, atol=1e-30)
    # the gather is bitwise; the rows differ only through the scale's rounding
    want = (x.reshape(-1, shape[-1]).index_select(0, idx).float() * scale.unsqueeze(1)).to(ref_kept.dtype)
    _same_bits(kept, want if keep_rows else ref_kept, "kept rows")
    torch.testing.assert_close(kept, ref_kept, rtol=rtol + 2 * UNIT[ref_kept.dtype], atol=1e-30)


def check_weight_grad(dtype: str, w_dtype: str, kept_as: str, transposed: bool, n: int, d_out: int, d_in: int, k: int):
    import wtacrs.norm_layers  # noqa: F401 (registers the layernorm row source)

    dt, wdt = getattr(torch, dtype), getattr(torch, w_dtype)
    g = _gen(n + d_out + d_in + k)
    grad = torch.randn(n, d_out, generator=g).to(dt).reshape(1, n, d_out)
    weight = torch.randn(*((d_in, d_out) if transposed else (d_out, d_in)), generator=g).to(wdt)
    idx = torch.randint(0, n, (k,), generator=g, dtype=torch.int32)
    source = ("", None, None, 0.0, None)
    if kept_as == "rows":
        saved = [idx, torch.randn(k, d_in, generator=g).to(dt)]
    else:  # a layernorm row source: rows recomputed from its input, scaled in the kernel
        x = torch.randn(1, n, d_in, generator=g).to(dt)
        ln_w, ln_b = torch.randn(d_in, generator=g).to(dt), torch.randn(d_in, generator=g).to(dt)
        saved = [idx, torch.rand(k, generator=g) + 0.5, x]
        source = ("layernorm", ln_w, ln_b, 1e-5, None)
    args = (grad, weight, saved, [1, n, d_in], True, True, True, kept_as, transposed, *source, -1, None)
    gx, gw, gb = linear_ops._backward(*args, fused=True)
    ref_gx, ref_gw, ref_gb = linear_ops._backward(*args, fused=False)
    assert torch.equal(gx, ref_gx) and torch.equal(gb, ref_gb)  # not the kernel's: the same code
    assert gw.shape == ref_gw.shape and gw.dtype == ref_gw.dtype == wdt
    # the exact product of the operands as the reference rounds them (to dY's dtype)
    g2 = grad.reshape(n, d_out)[idx.long()].double()
    if kept_as == "rows":
        xs = saved[1].to(dt)
    else:
        rows = F.layer_norm(saved[2].reshape(n, d_in)[idx.long()], (d_in,), source[1], source[2], 1e-5)
        xs = (rows * saved[1].unsqueeze(1)).to(dt)
    exact = g2.t() @ xs.double()
    bound = g2.abs().t() @ xs.double().abs()
    if transposed:
        exact, bound = exact.t(), bound.t()
    # accumulated in fp32 (k terms), rounded once to the weight's dtype
    tol = (UNIT[wdt] + 2 * k * U32) * bound + 1e-30
    err = (gw.double() - exact).abs()
    assert (err <= tol).all(), f"max error / bound {(err / bound.clamp_min(1e-30)).max():.3g}"


def check_cuda_implementations(dtype: str):
    """The functions registered for "cuda", run on CPU tensors with the kernels allowed: what the
    ops do on a GPU, argument plumbing included, against the reference."""
    import wtacrs.norm_layers  # noqa: F401 (registers the layernorm row source)
    from wtacrs import kernels

    allowed = kernels.use_triton
    kernels.use_triton = lambda *tensors: True
    try:
        _run_cuda_implementations(getattr(torch, dtype))
    finally:
        kernels.use_triton = allowed


def _run_cuda_implementations(dt, calls: list | None = None, fake=None):
    """Check the CUDA implementations against the reference; `calls`: instead, append each call of a
    CUDA implementation (a closure) to it, unchecked, with the inputs made fake by `fake` if given."""
    cuda = {op: op._backend_fns["cuda"] for op in (linear_ops.sample_rows, linear_ops.linear_backward)}
    cuda.update({op: op._backend_fns["cuda"] for op in (savers.bit_relu, savers.bit_dropout, savers.masked_grad)})
    if calls is not None:
        _cuda_calls(dt, cuda, calls, fake)
        return
    x = torch.randn(2, 9, 13, generator=_gen(1)).to(dt)
    y, packed = cuda[savers.bit_relu](x)
    _same_bits(y, torch.relu(x), "relu")
    assert torch.equal(packed, savers.pack_bits(x > 0))
    _same_bits(cuda[savers.masked_grad](x, packed, 2.0), savers.masked_grad(x, packed, 2.0), "masked grad")
    y, packed = cuda[savers.bit_dropout](x, 0.25)
    _same_bits(y, x * savers.unpack_bits(packed, x.shape).to(dt) * (1.0 / 0.75), "dropout")
    args = (x, [torch.rand(9, generator=_gen(2)) + 0.1], [], torch.rand(5, generator=_gen(3)), 5, "wta", True, dt)
    got, ref = cuda[linear_ops.sample_rows](*args), linear_ops.sample_rows(*args)
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=0)
    grad, weight = torch.randn(2, 9, 7, generator=_gen(4)).to(dt), torch.randn(7, 13, generator=_gen(5))
    for saved, source in (
        ([ref[0], ref[2]], ("", None, None, 0.0, None)),
        ([ref[0], ref[1], x], ("layernorm", torch.ones(13, dtype=dt), torch.zeros(13, dtype=dt), 1e-5, None)),
    ):
        kept_as = "rows" if len(saved) == 2 else "source"
        bwd = (grad, weight, saved, [2, 9, 13], True, True, True, kept_as, False, *source, -1, None)
        for a, b in zip(cuda[linear_ops.linear_backward](*bwd), linear_ops.linear_backward(*bwd)):
            torch.testing.assert_close(a, b, rtol=2 * UNIT[dt], atol=1e-5)


def _cuda_calls(dt, cuda: dict, calls: list, fake) -> None:
    """_run_cuda_implementations' calls, as closures, on fake inputs where `fake` is a FakeTensorMode."""

    def inputs(*tensors):
        return [t if fake is None or not isinstance(t, torch.Tensor) else fake.from_tensor(t) for t in tensors]

    x, packed = inputs(torch.randn(2, 9, 13, generator=_gen(1)).to(dt), savers.pack_bits(torch.rand(2, 9, 13) > 0.5))
    calls.append(lambda: cuda[savers.bit_relu](x))
    calls.append(lambda: cuda[savers.masked_grad](x, packed, 2.0))
    calls.append(lambda: cuda[savers.bit_dropout](x, 0.25))
    table, u = inputs(torch.rand(9, generator=_gen(2)) + 0.1, torch.rand(5, generator=_gen(3)))
    for method, keep_rows in (("wta", True), ("crs", True), ("topk", False)):
        calls.append(lambda m=method, keep=keep_rows: cuda[linear_ops.sample_rows](x, [table], [], u, 5, m, keep, dt))
    idx, scale, rows = inputs(torch.randint(0, 18, (5,), dtype=torch.int32), torch.rand(5), torch.randn(5, 13).to(dt))
    grad, weight, ln_w, ln_b = inputs(
        torch.randn(2, 9, 7, generator=_gen(4)).to(dt), torch.randn(7, 13, generator=_gen(5)),
        torch.ones(13, dtype=dt), torch.zeros(13, dtype=dt),
    )  # fmt: skip
    for saved, source in (([idx, rows], ("", None, None, 0.0, None)), ([idx, scale, x], ("layernorm", ln_w, ln_b, 1e-5, None))):  # fmt: skip
        kept_as = "rows" if len(saved) == 2 else "source"
        bwd = (grad, weight, saved, [2, 9, 13], True, True, True, kept_as, False, *source, -1, None)
        calls.append(lambda bwd=bwd: cuda[linear_ops.linear_backward](*bwd))


def check_modelled_allocations(dtype: str):
    """What the profiler's estimate counts for the ops on a modelled CUDA device (fake tensors,
    `kernels.modelled_cuda`, every launch skipped) is what their CUDA implementations allocate
    when they run (here in the interpreter): the same storages, in the same order, of the same
    sizes. The reference allocates others (dropout's float mask, the plan's vectors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import wtacrs.norm_layers  # noqa: F401 (registers the layernorm row source)
    from profiler.instruments.replay import ALLOC
    from profiler.instruments.tracker import StorageTracker
    from wtacrs import kernels

    def allocations(run) -> list[int]:
        tracker = StorageTracker(record=True)
        with tracker:
            run()
        log = tracker.event_log()
        return log.sizes[log.kinds == ALLOC].tolist()

    from torch.utils._python_dispatch import _disable_current_modes

    from wtacrs.kernels import bits, sampling, weight_grad

    def uncounted(kernel, *args, **meta):  # the interpreter's own copies are no GPU allocation
        with _disable_current_modes():
            return launch(kernel, *args, **meta)

    dt = getattr(torch, dtype)
    allowed, launch = kernels.use_triton, kernels.launch
    kernels.use_triton = lambda *tensors: True
    for module in (bits, sampling, weight_grad):
        module.launch = uncounted
    try:
        ran = []
        allocations(lambda: _run_cuda_implementations(dt, ran))
        ran_sizes = [allocations(call) for call in ran]
    finally:
        kernels.use_triton = allowed
        for module in (bits, sampling, weight_grad):
            module.launch = launch
    modelled = []
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, kernels.modelled_cuda((9, 0)):
        _run_cuda_implementations(dt, modelled, fake=mode)
        modelled_sizes = [allocations(call) for call in modelled]
    assert len(modelled_sizes) == len(ran_sizes) > 0
    for i, (a, b) in enumerate(zip(modelled_sizes, ran_sizes)):
        assert a == b, (i, a, b)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:  # standing for no device: the reference
        reference = []
        _run_cuda_implementations(dt, reference, fake=mode)
        assert [allocations(call) for call in reference] != ran_sizes


# ---------------------------------------------------------------- the tests


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_implementations_in_the_interpreter(interp, dtype):
    interp("cuda_implementations", dtype=dtype)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_estimate_counts_what_the_cuda_implementations_allocate(interp, dtype):
    interp("modelled_allocations", dtype=dtype)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 8, 13, 2049])
def test_relu_bits(interp, dtype, n):
    interp("relu", dtype=dtype, n=n)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,scale", [(1, 1.0), (13, 1.0 / 0.7), (2051, 1.25)])
def test_masked_grad(interp, dtype, n, scale):
    interp("masked_grad", dtype=dtype, n=n, scale=scale)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,p", [(1, 0.5), (13, 0.1), (100, 0.0), (8191, 0.3)])
def test_dropout_bits(interp, dtype, n, p):
    interp("dropout", dtype=dtype, n=n, p=p)


@needs_triton
@pytest.mark.parametrize(
    "x_dtype,out_dtype", [("float32", "float32"), ("float32", "bfloat16"), ("bfloat16", "bfloat16"), ("float16", "float16"), ("float32", "float16")]
)  # fmt: skip
@pytest.mark.parametrize("n,d,k,strided", [(37, 13, 5, False), (9, 300, 1, False), (20, 24, 20, True)])
def test_scaled_gather(interp, x_dtype, out_dtype, n, d, k, strided):
    interp("gather", x_dtype=x_dtype, out_dtype=out_dtype, n=n, d=d, k=k, strided=strided)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,n_tables,n_factors", [([2, 10, 8], 0, 0), ([3, 37, 33], 1, 0), ([2, 5, 300], 3, 1), ([2, 7, 6], 5, 0)]
)
def test_row_weights(interp, dtype, shape, n_tables, n_factors):
    interp("row_weights", dtype=dtype, shape=shape, n_tables=n_tables, n_factors=n_factors)


@needs_triton
@pytest.mark.parametrize("method", ["wta", "crs", "topk"])
@pytest.mark.parametrize(
    "n,k,weights", [(20, 6, "random"), (37, 1, "random"), (50, 50, "random"), (300, 90, "heavy"), (12, 4, "zero")]
)
def test_plan(interp, method, n, k, weights):
    interp("plan", method=method, n=n, k=k, weights=weights)


@needs_triton
@pytest.mark.parametrize("dtype,out_dtype", [("float32", "float32"), ("float32", "bfloat16"), ("bfloat16", "bfloat16"), ("float16", "float16")])  # fmt: skip
@pytest.mark.parametrize("method", ["wta", "crs", "topk"])
@pytest.mark.parametrize("shape,k,keep_rows", [([2, 10, 8], 6, True), ([3, 11, 13], 1, True), ([17, 9], 5, False)])
def test_sample_rows(interp, dtype, out_dtype, method, shape, k, keep_rows):
    interp("sample_rows", dtype=dtype, shape=shape, k=k, method=method, keep_rows=keep_rows, out_dtype=out_dtype)


@needs_triton
@pytest.mark.parametrize(
    "dtype,w_dtype", [("float32", "float32"), ("bfloat16", "float32"), ("bfloat16", "bfloat16"), ("float16", "float16")]
)
@pytest.mark.parametrize("kept_as", ["rows", "source"])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("n,d_out,d_in,k", [(40, 24, 40, 17), (9, 5, 3, 1)])
def test_weight_grad(interp, dtype, w_dtype, kept_as, transposed, n, d_out, d_in, k):
    interp("weight_grad", dtype=dtype, w_dtype=w_dtype, kept_as=kept_as, transposed=transposed, n=n, d_out=d_out, d_in=d_in, k=k)  # fmt: skip


def test_cpu_and_the_switch_keep_the_reference(monkeypatch):
    from wtacrs import kernels

    x = torch.randn(4, 8)
    assert not kernels.use_triton(x)  # CPU tensors: the reference, always
    monkeypatch.setenv(kernels.ENV, "0")
    assert not kernels.use_triton()
    assert kernels.describe() == "pytorch reference (WTACRS_TRITON=0)"
    monkeypatch.setenv(kernels.ENV, "1")
    assert kernels.use_triton() == kernels.triton_available()
    if kernels.triton_available():
        import triton

        assert kernels.describe() == f"triton {triton.__version__}"
        monkeypatch.setenv(kernels.ENV, "strict")
        assert kernels.describe() == f"triton {triton.__version__} (strict)"


def test_an_older_gpu_is_described_as_running_the_reference(monkeypatch):
    from wtacrs import kernels

    monkeypatch.setattr(kernels, "failures", [])
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(kernels, "_device_ok", lambda index: False)  # a V100, a T4, a ROCm GPU
    assert kernels.describe() == "pytorch reference (the kernels need an NVIDIA GPU of sm_80 or newer)"


def test_a_kernel_that_raises_falls_back_to_the_reference(monkeypatch):
    from wtacrs import kernels

    monkeypatch.setattr(kernels, "failures", [])

    def broken():
        raise RuntimeError("no such instruction")

    monkeypatch.setenv(kernels.ENV, "strict")
    with pytest.raises(RuntimeError, match="no such instruction"):
        kernels.run("wtacrs::op", broken, lambda: "reference")
    assert kernels.failures == []
    monkeypatch.setenv(kernels.ENV, "1")
    with pytest.warns(RuntimeWarning, match="wtacrs::op.*no such instruction.*PyTorch reference"):
        assert kernels.run("wtacrs::op", broken, lambda: "reference") == "reference"
    assert kernels.failures and not kernels.use_triton()  # off for the rest of the process
    assert kernels.describe() == "pytorch reference (a kernel failed: wtacrs::op: RuntimeError('no such instruction'))"


# ---------------------------------------------------------------- the real compiler, no GPU needed


def _compile_sm90(fn, signature: dict, constexprs: dict):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    full = dict(signature, **{name: "constexpr" for name in constexprs})
    try:
        src = ASTSource(fn, signature=full, constexprs=constexprs)
    except TypeError as e:  # another triton's ASTSource
        pytest.skip(f"this triton's ASTSource takes other arguments: {e}")
    return triton.compile(src, target=GPUTarget("cuda", 90, 32))


@needs_triton
@pytest.mark.slow
def test_every_kernel_compiles_for_sm90():
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        pytest.skip("TRITON_INTERPRET=1: the kernels are interpreted functions in this process")
    from wtacrs.kernels import bits, sampling, weight_grad

    f32, i32 = "*fp32", "i32"
    cases = [
        (bits._dropout_kernel, dict(x_ptr="*bf16", y_ptr="*bf16", bits_ptr="*u8", seed_ptr="*i64", n=i32, p="fp32", scale="fp32"), dict(KIND=2, BYTES=bits.BYTES)),
        (bits._relu_kernel, dict(x_ptr="*bf16", y_ptr="*bf16", bits_ptr="*u8", n=i32), dict(BYTES=bits.BYTES)),
        (bits._masked_grad_kernel, dict(g_ptr="*fp16", bits_ptr="*u8", out_ptr="*fp16", n=i32, scale="fp32"), dict(KIND=1, BYTES=bits.BYTES)),
        (sampling._row_weights_kernel, dict(x_ptr="*bf16", w_ptr=f32, sq_ptr=f32, t0=f32, t1=f32, t2=f32, t3=f32, n_rows=i32, n_cols=i32, seq=i32, stride_r=i32, stride_c=i32), dict(NUM_T=2, HAS_SQ=True, BLOCK_R=16, BLOCK_D=256, BLOCK_S=128)),
        (sampling._plan_kernel, dict(w_ptr=f32, top_ptr=f32, order_ptr="*i64", u_ptr=f32, cdf_ptr=f32, flag_ptr="*i8", idx_ptr="*i32", scale_ptr=f32, n=i32, k=i32, inv_n="fp32", search_steps=i32), dict(WTA=True, BLOCK=2048)),
        (sampling._gather_kernel, dict(x_ptr=f32, idx_ptr="*i32", scale_ptr=f32, out_ptr="*bf16", k=i32, n_cols=i32, stride_r=i32, stride_c=i32), dict(KIND=2, BLOCK_R=8, BLOCK_D=256)),
    ]  # fmt: skip
    wg = dict(
        k=i32,
        n_m=i32,
        n_n=i32,
        stride_gr=i32,
        stride_gc=i32,
        stride_xr=i32,
        stride_xc=i32,
        stride_om=i32,
        stride_on=i32,
    )
    for g, x, scaled, block in (("bf16", "fp32", True, 128), ("fp32", "fp32", False, 64)):
        sig = dict(g_ptr="*" + g, idx_ptr="*i32", x_ptr="*" + x, scale_ptr=f32, out_ptr=f32, **wg)
        kinds = {"bf16": 2, "fp32": 0}
        meta = dict(G_KIND=kinds[g], X_KIND=kinds[x], OUT_KIND=0, SCALED=scaled, UPCAST=False, PRECISION="ieee", BM=block, BN=block, BK=32)  # fmt: skip
        cases.append((weight_grad._weight_grad_kernel, sig, meta))
    for fn, sig, meta in cases:
        compiled = _compile_sm90(fn, sig, meta)
        assert compiled.asm["cubin"], fn


def _compile_launches_for_sm90(monkeypatch) -> list[tuple[str, dict, dict]]:
    """From here on, `kernel[grid](*args)` compiles what the same launch compiles on an H100 and
    launches nothing: the JIT's own binder specialises the arguments given (dtypes, 16-byte
    alignment, ints equal to 1 become constants, ints divisible by 16 are marked so) and the
    result is compiled for sm_90. Returns the list each compile is appended to (kernel name,
    signature, constants). Uses the JIT's internals `create_function_from_signature` and
    `JITFunction._pack_args`, the same in triton 3.5 ... 3.9."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime import jit

    if not (hasattr(jit, "create_function_from_signature") and hasattr(jit.JITFunction, "_pack_args")):
        pytest.fail(f"triton {triton.__version__}'s JIT has other internals: adapt _compile_launches_for_sm90")
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    compiled = []

    def run(self, *args, grid, warmup, **kwargs):
        binder = jit.create_function_from_signature(self.signature, self.params, backend)
        bound_args, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound_args, specialization, options)
        kernel = triton.compile(ASTSource(self, signature, constexprs, attrs), target=target, options=options.__dict__)
        assert kernel.asm["cubin"], self.__name__
        compiled.append((self.__name__, signature, constexprs))
        return kernel

    monkeypatch.setattr(jit.JITFunction, "run", run)
    return compiled


@needs_triton
@pytest.mark.slow
def test_every_launch_compiles_for_sm90(monkeypatch):
    """The kernels launched as the ops launch them on a GPU, each branch of their constants and the
    argument specialisations a GPU run meets (odd sizes, k = 1, unit strides, a transposed input),
    compiled for sm_90: what the hand-written signatures above cannot see."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        pytest.skip("TRITON_INTERPRET=1: the kernels are interpreted functions in this process")
    from wtacrs.kernels import bits, sampling, weight_grad

    compiled = _compile_launches_for_sm90(monkeypatch)
    # the tiles and the TF32 choice a GPU makes (132 SMs: an H100 SXM)
    monkeypatch.setattr(weight_grad, "_config", lambda n_m, n_n, dtype, device: weight_grad._gpu_config(n_m, n_n, dtype, 132))  # fmt: skip
    precision = {"value": "ieee"}
    monkeypatch.setattr(weight_grad, "_precision", lambda device: precision["value"])
    seed = torch.tensor([3], dtype=torch.int64)
    for dt, shape in [(torch.float32, (4, 128, 771)), (torch.bfloat16, (4, 128, 771)), (torch.float16, (4, 128, 771)), (torch.float32, (2, 9, 13))]:  # fmt: skip
        x = torch.randn(*shape).to(dt)
        _, packed = bits.relu(x)
        bits.masked_grad(x, packed, 1.0 / 0.7)
        bits.dropout(x, 0.1, seed)
    b, h, f = torch.bfloat16, torch.float16, torch.float32
    transposed_x = torch.randn(768, 512).t()  # [512, 768], unit row stride
    for x, n_tables, n_factors, k, method, keep_rows, out in [
        (torch.randn(4, 128, 768).to(b), 2, 0, 154, "wta", True, b),
        (torch.randn(4, 128, 768), 0, 0, 154, "crs", True, b),
        (torch.randn(2, 9, 13).to(h), 5, 1, 5, "wta", True, h),  # four tables fused, the rest as factors
        (torch.randn(3, 11, 13), 1, 0, 1, "wta", True, f),
        (transposed_x, 0, 0, 51, "crs", True, f),
        (torch.randn(4, 128, 768).to(b), 1, 0, 154, "topk", False, b),
    ]:  # fmt: skip
        seq, n = (x.shape[-2], x.shape[:-1].numel()) if x.dim() >= 3 else (1, x.shape[0])
        tables = [torch.rand(seq + t) + 0.1 for t in range(n_tables)]
        factors = [torch.rand(n) + 0.1 for _ in range(n_factors)]
        sampling.sample_rows(x, tables, factors, torch.rand(k), k, method, keep_rows, out)
    for g_dt, rows_dt, scaled, transposed, out, tf32, (n, d_out, d_in, k) in [
        (b, b, False, False, f, False, (512, 768, 3072, 154)),  # 128 x 128 tiles
        (b, b, False, True, b, True, (512, 768, 3072, 154)),
        (b, f, True, False, f, False, (512, 768, 768, 154)),  # a row source: scaled in the kernel; 64 x 64 tiles
        (h, h, False, True, h, False, (90, 13, 7, 9)),
        (f, f, False, False, f, False, (512, 768, 768, 154)),
        (f, f, True, True, f, True, (512, 768, 768, 1)),
    ]:  # fmt: skip
        precision["value"] = "tf32" if tf32 else "ieee"
        idx = torch.randint(0, n, (k,), dtype=torch.int32)
        scale = torch.rand(k) if scaled else None
        weight_grad.weight_grad(torch.randn(n, d_out).to(g_dt), idx, torch.randn(k, d_in).to(rows_dt), scale, transposed, out)  # fmt: skip
    names = {name for name, _, _ in compiled}
    assert names == {
        "_relu_kernel", "_masked_grad_kernel", "_dropout_kernel", "_row_weights_kernel", "_plan_kernel",
        "_gather_kernel", "_weight_grad_kernel",
    }, names  # fmt: skip
    # each constant branch was compiled
    consts = {}
    for name, signature, constexprs in compiled:
        names_by_index = list(signature)
        for path, value in constexprs.items():
            consts.setdefault((name, names_by_index[path[0]]), set()).add(value)
    assert consts[("_row_weights_kernel", "NUM_T")] >= {0, 1, 2, 4} and consts[("_row_weights_kernel", "HAS_SQ")] == {False, True}  # fmt: skip
    assert consts[("_plan_kernel", "WTA")] == {False, True} and consts[("_gather_kernel", "KIND")] == {0, 1, 2}
    assert consts[("_weight_grad_kernel", "PRECISION")] == {"ieee", "tf32"}
    assert consts[("_weight_grad_kernel", "SCALED")] == {False, True} and consts[("_weight_grad_kernel", "OUT_KIND")] == {0, 1, 2}  # fmt: skip


# ---------------------------------------------------------------- on a GPU


def _cuda_time(fn, reps: int = 50) -> float:
    """Milliseconds per call (CUDA events, after warm-up)."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def _both(monkeypatch, fn):
    """(fn() with the Triton kernels, fn() with the reference, their times in ms), on CUDA."""
    out = {}
    for flag in ("strict", "0"):  # strict: a kernel that raises fails the test (no fallback)
        monkeypatch.setenv("WTACRS_TRITON", flag)
        torch.manual_seed(0)
        out[flag] = (fn(), _cuda_time(fn))
    return out["strict"][0], out["0"][0], out["strict"][1], out["0"][1]


def _report(record_property, name, t_triton, t_ref):
    record_property(f"{name}_ms", {"triton": round(t_triton, 4), "reference": round(t_ref, 4)})
    print(f"{name}: triton {t_triton * 1e3:.1f} us, reference {t_ref * 1e3:.1f} us ({t_ref / t_triton:.2f}x)")


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_bit_ops_match_reference(monkeypatch, record_property, dtype):
    x = torch.randn(64, 128, 771, device="cuda").to(dtype)
    x.view(-1)[:3] = torch.tensor([-0.0, float("inf"), float("-inf")])
    (y, b), (ry, rb), t1, t0 = _both(monkeypatch, lambda: savers.bit_relu(x))
    assert torch.equal(y, ry) and torch.equal(b, rb)  # -0.0 == 0.0 here: torch's CUDA relu may drop the sign
    _report(record_property, f"bit_relu_{dtype}", t1, t0)
    g = torch.randn_like(x)
    out, ref, t1, t0 = _both(monkeypatch, lambda: savers.masked_grad(g, rb, 1.0 / 0.7))
    assert torch.equal(out, ref)
    _report(record_property, f"masked_grad_{dtype}", t1, t0)
    (y, b), _, t1, t0 = _both(monkeypatch, lambda: savers.bit_dropout(x, 0.1))
    keep = savers.unpack_bits(b, x.shape)
    assert torch.equal(y, x * keep.to(dtype) * (1.0 / 0.9))
    assert abs(keep.double().mean().item() - 0.9) < 5 * math.sqrt(0.09 / keep.numel())
    _report(record_property, f"bit_dropout_{dtype}", t1, t0)


def _differ_only_within_rounding(x, tables, u, got_idx, ref_idx, ref_scale):
    """What the arithmetic allows two fp32 computations of one sampling plan to differ by.

    The kernel and the reference compute the same quantities in another summation order: row norms
    (d terms), the running factor (a mean of L table entries), p = w / sum(w) and the CDF of the
    non-winners (n terms), the target u * R. Neither is exact, so a draw may land on another row
    where its target falls within rounding of a CDF step, and nowhere else; how many do is chance
    (about one in 12 runs had more than 3 of 3,840, which a count bound cannot allow for). So each
    index that differs is checked, in fp64 from the same inputs: if either side's CDF and target are
    within e of the exact ones, and the two sides drew rows lo < hi, then kernel and reference both
    put the exact target t within 2e of the exact CDF at lo, |t - cdf[lo]| <= 2e, and the exact mass
    of the rows between them, cdf[hi - 1] - cdf[lo], is at most 4e. e: each of these sums is a tree
    reduction or scan (depth about log2 of its length) plus short sequential runs (a thread's items,
    the carry from block to block, the few elementwise steps), each addition adding at most one unit
    roundoff of the running value; 32 covers the sequential runs. The bound is a worst case: it lets
    about a fifth of all draws differ, so a single index off by one row passes about one time in five,
    but an error that moves many draws (a wrong CDF, search or winner set) cannot."""
    n, d = x.numel() // x.shape[-1], x.shape[-1]
    depth = math.ceil(math.log2(n)) + math.ceil(math.log2(d)) + math.ceil(math.log2(x.shape[-2])) + 32
    x2 = x.reshape(n, d).double()
    from wtacrs.grad_norm_history import running_factor

    g = sum(running_factor(t.double(), x.shape) ** 2 for t in tables)
    w = x2.norm(dim=1) * g.sqrt()
    p = w / w.sum()
    # the winners (wta): the leading slots of scale 1, the same rows on both sides
    c = int(torch.cumprod((ref_scale == 1.0).int(), 0).sum())
    assert torch.equal(got_idx[:c], ref_idx[:c]), "the winners differ"
    rest = p.clone()
    rest[ref_idx[:c].long()] = 0.0
    cdf = torch.cumsum(rest, 0)
    e = depth * U32 * float(cdf[-1])
    target = u.double() * cdf[-1]
    differ = (got_idx != ref_idx).nonzero().flatten()
    lo = torch.minimum(got_idx, ref_idx)[differ].long()
    hi = torch.maximum(got_idx, ref_idx)[differ].long()
    off_step = (target[differ] - cdf[lo]).abs() / e
    between = (cdf[hi - 1] - cdf[lo]) / e
    assert (off_step <= 2).all() and (between <= 4).all(), (
        f"{len(differ)} of {len(ref_idx)} indices differ; beyond rounding: target off the step by "
        f"{off_step.max():.3g} e (<= 2), mass between {between.max():.3g} e (<= 4), e = {e:.3g}"
    )


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["wta", "crs"])
def test_cuda_sample_rows_matches_reference(monkeypatch, record_property, dtype, method):
    x = torch.randn(100, 128, 768, device="cuda").to(dtype)
    tables = [torch.rand(128, device="cuda") + 0.1, torch.rand(130, device="cuda") + 0.1]
    u = torch.rand(3840, device="cuda")
    args = (x, tables, [], u, 3840, method, True, dtype)
    got, ref, t1, t0 = _both(monkeypatch, lambda: linear_ops.sample_rows(*args))
    same = got[0] == ref[0]
    _differ_only_within_rounding(x, tables, u, got[0], ref[0], ref[1])
    rtol = 8 * (x.numel() // x.shape[-1] + 3840) * U32  # n-term fp32 sums in another order
    torch.testing.assert_close(got[1][same], ref[1][same], rtol=rtol, atol=0)
    torch.testing.assert_close(got[2][same], ref[2][same], rtol=rtol + 2 * UNIT[dtype], atol=0)
    _report(record_property, f"sample_rows_{method}_{dtype}", t1, t0)


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("transposed", [False, True])
def test_cuda_weight_grad_matches_reference(monkeypatch, record_property, dtype, transposed):
    n, d_out, d_in, k = 12800, 768, 3072, 3840
    grad = torch.randn(100, 128, d_out, device="cuda").to(dtype)
    weight = torch.randn(*((d_in, d_out) if transposed else (d_out, d_in)), device="cuda")
    idx = torch.randint(0, n, (k,), device="cuda", dtype=torch.int32)
    saved = [idx, torch.randn(k, d_in, device="cuda").to(dtype)]
    args = (grad, weight, saved, [100, 128, d_in], False, True, False, "rows", transposed, "", None, None, 0.0, None, -1, None)  # fmt: skip
    (_, gw, _), (_, ref, _), t1, t0 = _both(monkeypatch, lambda: linear_ops.linear_backward(*args))
    bound = (grad.reshape(n, d_out)[idx.long()].float().abs().t() @ saved[1].float().abs()).double()
    bound = bound.t() if transposed else bound
    err = (gw.double() - ref.double()).abs()
    assert (err <= (2 * UNIT[dtype] + 2 * k * U32) * bound + 1e-30).all()
    _report(record_property, f"weight_grad_{dtype}_{'T' if transposed else 'N'}", t1, t0)


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("family", ["bert", "t5"])
def test_cuda_model_step_same_with_and_without_kernels(monkeypatch, family):
    """A patched model's gradients, kernels on and off: the same sample (same draws), so equal up
    to summation order. eval(): dropout off (its stream differs), sampling still on."""
    import copy

    import wtacrs
    from tests.wtacrs.models import inputs, tiny

    base = tiny(family).cuda().eval()
    wtacrs.apply_wtacrs(base, wtacrs.WTACRSConfig(ratio=0.3))
    batch = {k: v.cuda() for k, v in inputs(family, batch=4, seq=32).items()}
    grads = {}
    for flag in ("strict", "0"):
        monkeypatch.setenv("WTACRS_TRITON", flag)
        model = copy.deepcopy(base)  # fresh gradient-norm histories: the same probabilities
        for _ in range(2):  # the second step samples with the running tables the first filled
            model.zero_grad()
            torch.manual_seed(1)
            model(**batch).loss.backward()
        grads[flag] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads["strict"].keys() == grads["0"].keys()
    for name, ref in grads["0"].items():
        torch.testing.assert_close(grads["strict"][name], ref, rtol=1e-3, atol=1e-5, msg=name)
    monkeypatch.setenv("WTACRS_TRITON", "strict")
    compiled = torch.compile(copy.deepcopy(base))
    loss = compiled(**batch).loss
    loss.backward()  # the kernels inside a compiled graph
    assert torch.isfinite(loss)
