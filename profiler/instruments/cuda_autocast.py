"""CUDA's autocast rules, applied to a trace on fake CPU tensors.

The estimate traces on CPU tensors, so `torch.autocast` there follows the CPU's op lists, which
differ from CUDA's in what they keep for backward: CUDA runs softmax, layer norm, rsqrt, pow and
friends in fp32 (a bf16 model's attention probabilities are then saved in fp32), the CPU leaves them
in bf16. While `cuda_autocast()` is active, the AutocastCPU dispatch key runs CUDA's policies
instead: the ops CUDA's autocast wraps get CUDA's wrapper, the ops only the CPU's wraps fall
through (as on CUDA, a composite among them is then cast op by op inside).

Which ops CUDA's autocast wraps is read from the running torch's dispatcher (every build registers
the AutocastCUDA kernels, CPU builds too); how each is cast is not, so the policies are ATen's lists
(`ATen/autocast_mode.h`, torch 2.13) below, by op. An op the running torch wraps under another
overload takes the policy its base op has in the lists (torch 2.11 also wraps the Dimname overloads,
`softmax.Dimname`, `sum.dim_DimnameList`, ...), and an op it does not wrap is left out (2.11 has no
`rms_norm` rule: its composite is cast op by op, as on a 2.11 GPU). `tests/profiler/test_cuda_autocast.py`
checks that every op the installed torch wraps has a policy.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch.utils._pytree import tree_flatten, tree_map

# ATen's AT_FORALL_* lists: the CUDA autocast wrapper of each op
LOWER_PRECISION = (
    "_convolution.deprecated _convolution conv1d conv2d conv3d conv_tbc conv_transpose1d conv_transpose2d.input "
    "conv_transpose3d.input convolution prelu addmm addmv addr matmul einsum mm mv linalg_vecdot linear addbmm "
    "baddbmm bmm chain_matmul linalg_multi_dot _thnn_fused_lstm_cell _thnn_fused_gru_cell lstm_cell gru_cell "
    "rnn_tanh_cell rnn_relu_cell _scaled_dot_product_flash_attention scaled_dot_product_attention "
    "cudnn_convolution cudnn_convolution_transpose"
).split()
FP32 = (
    "acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan pow.Tensor_Scalar "
    "pow.Tensor_Tensor pow.Scalar softplus layer_norm native_layer_norm rms_norm group_norm frobenius_norm.dim "
    "nuclear_norm nuclear_norm.dim cosine_similarity poisson_nll_loss cosine_embedding_loss nll_loss nll_loss2d "
    "hinge_embedding_loss kl_div l1_loss smooth_l1_loss huber_loss mse_loss margin_ranking_loss "
    "multilabel_margin_loss soft_margin_loss triplet_margin_loss multi_margin_loss "
    "binary_cross_entropy_with_logits dist pdist cdist renorm logsumexp upsample_nearest1d upsample_nearest2d "
    "upsample_nearest3d _upsample_nearest_exact1d _upsample_nearest_exact2d _upsample_nearest_exact3d "
    "upsample_linear1d upsample_bilinear2d _upsample_bilinear2d_aa upsample_trilinear3d upsample_bicubic2d "
    "_upsample_bicubic2d_aa"
).split()
FP32_SET_OPT_DTYPE = (
    "prod prod.dim_int softmax.int log_softmax.int cumprod cumsum linalg_vector_norm linalg_matrix_norm "
    "linalg_matrix_norm.str_ord sum sum.dim_IntList"
).split()
# the fp32 overload each is redispatched to, with dtype=float32 appended
FP32_APPEND_DTYPE = {
    "norm.Scalar": "ScalarOpt_dtype",
    "norm.ScalarOpt_dim": "ScalarOpt_dim_dtype",
    "norm.names_ScalarOpt_dim": "names_ScalarOpt_dim_dtype",  # torch < 2.12
}
PROMOTE = "addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put tensordot scatter_add".split()
BANNED = ("binary_cross_entropy",)  # CUDA's autocast refuses it: its kernel raises
# wrapped outside ATen's lists: torch < 2.12 casts cuDNN's RNN to the lower precision (AutocastRNN.cpp)
ELSEWHERE = {"_cudnn_rnn": "lower"}

_KEY = torch._C.DispatchKey.AutocastCPU


def _op(name: str):
    base, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default")


def _eligible(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


# ATen's `cached_cast`: within an autocast region, a trainable fp32 leaf (a weight) is cast to the
# lower precision once, and the copy is held until the region ends (so a sampled layer that saves
# no copy of its own still holds one through the forward). Filled and cleared as torch does; the
# original is held beside its copy so that its id is not reused while the entry lives.
_weight_casts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _cast(args, kwargs, dtype, cache: bool = False):
    def cast(t):
        if not _eligible(t) or t.dtype == dtype:
            return t
        cacheable = (
            cache and t.dtype == torch.float32 and t.requires_grad and t.is_leaf and not t._is_view()
        ) and torch.is_autocast_cache_enabled()
        if not cacheable:
            return t.to(dtype)
        if id(t) not in _weight_casts:
            _weight_casts[id(t)] = (t, t.to(dtype))
        return _weight_casts[id(t)][1]

    return tree_map(cast, args), tree_map(cast, kwargs)


def _redispatch(op, args, kwargs):
    with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_KEY)):
        return op(*args, **kwargs)


def _kernel(name: str, policy: str):
    op = _op(name)
    dtype_at = next((i for i, a in enumerate(op._schema.arguments) if a.name == "dtype"), None)

    def kernel(*args, **kwargs):
        if policy == "lower":
            args, kwargs = _cast(args, kwargs, torch.get_autocast_dtype("cpu"), cache=True)
        elif policy == "fp32":
            args, kwargs = _cast(args, kwargs, torch.float32)
        elif policy == "set_opt_dtype":
            given = args[dtype_at] if len(args) > dtype_at else kwargs.get("dtype")
            if given is None and _eligible(args[0]):
                if len(args) > dtype_at:
                    args = (*args[:dtype_at], torch.float32, *args[dtype_at + 1 :])
                else:
                    kwargs = {**kwargs, "dtype": torch.float32}
        elif policy == "promote":
            widest = torch.get_autocast_dtype("cpu")
            for t in tree_flatten(args)[0]:
                if _eligible(t):
                    widest = torch.promote_types(widest, t.dtype)
            args, kwargs = _cast(args, kwargs, widest)
        elif policy == "append_dtype":
            first = args[0]
            target = _op(f"norm.{FP32_APPEND_DTYPE[name]}")
            return _redispatch(target, (*args, torch.float32 if _eligible(first) else first.dtype), kwargs)
        return _redispatch(op, args, kwargs)

    return kernel


def _banned(*args, **kwargs):
    raise RuntimeError(
        "torch.nn.functional.binary_cross_entropy is unsafe to autocast on CUDA; use binary_cross_entropy_with_logits"
    )


def _listed() -> dict[str, str]:
    """ATen's lists as {op name: policy}, every op that any supported torch wraps."""
    table = {n: "lower" for n in LOWER_PRECISION} | {n: "fp32" for n in FP32}
    table |= {n: "set_opt_dtype" for n in FP32_SET_OPT_DTYPE} | {n: "promote" for n in PROMOTE}
    table |= {n: "append_dtype" for n in FP32_APPEND_DTYPE} | {n: "banned" for n in BANNED}
    return table | ELSEWHERE


def _wrapped(key: str) -> list[str]:
    """The aten ops (name.overload) with a kernel for dispatch key `key` in the running torch."""
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("aten::")]
    return [n[len("aten::") :] for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(n, key)]


def _policy_of(name: str, listed: dict[str, str]) -> str | None:
    if name in listed:
        return listed[name]
    # another overload of a listed op (a Dimname one): the policy all its listed overloads share
    base = name.partition(".")[0]
    found = {policy for op, policy in listed.items() if op.partition(".")[0] == base}
    return found.pop() if len(found) == 1 and "append_dtype" not in found else None


def policies() -> dict[str, str]:
    """{op: policy} for every op the running torch's CUDA autocast wraps; "unknown" for one no list
    covers (tests/profiler/test_cuda_autocast.py fails on it; at run time it is left to the CPU's rule)."""
    listed = _listed()
    return {name: _policy_of(name, listed) or "unknown" for name in sorted(_wrapped("AutocastCUDA"))}


def _cpu_wrapped() -> list[str]:
    return _wrapped("AutocastCPU")


@contextlib.contextmanager
def cuda_autocast():
    """While active, `torch.autocast("cpu", ...)` casts as `torch.autocast("cuda", ...)` would."""
    table, cpu_only = policies(), _cpu_wrapped()
    clear = torch.clear_autocast_cache

    def clear_both():  # what `torch.autocast.__exit__` calls when the outermost region ends
        _weight_casts.clear()
        clear()

    torch.clear_autocast_cache = clear_both
    lib = torch.library.Library("aten", "IMPL")  # its registrations go when it is destroyed
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*overrid")  # replacing the CPU's kernels is the point
            for name, policy in table.items():
                try:
                    _op(name)
                except AttributeError:  # not every build has every op
                    continue
                if policy == "unknown":  # no list says how: the CPU's rule stays
                    continue
                lib.impl(name, _banned if policy == "banned" else _kernel(name, policy), "AutocastCPU")
            for name in cpu_only:
                if name not in table:  # CUDA's autocast has no kernel: composites cast inside, per op
                    lib.impl(name, torch.library.fallthrough_kernel, "AutocastCPU")
        yield
    finally:
        lib._destroy()
        torch.clear_autocast_cache = clear
        _weight_casts.clear()
