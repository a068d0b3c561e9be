"""The CUDA kernel model the estimate traces with: ATen's choices, reproduced without a GPU."""

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from profiler.instruments.cuda_model import SM90, _efficient_bias, cuda_kernels, sdpa_backend
from wtacrs.memory import SavedTensorCounter


def _qkv(dtype, heads=4, kv_heads=4, d=64, length=16):
    q = torch.empty(2, heads, length, d, dtype=dtype)
    kv = torch.empty(2, kv_heads, length, d, dtype=dtype)
    return q, kv, kv


def test_backend_choice_follows_aten():
    with FakeTensorMode():
        q, k, v = _qkv(torch.float32)
        assert sdpa_backend(q, k, v, None, False, SM90) == "efficient"  # no flash in fp32
        q, k, v = _qkv(torch.bfloat16)
        assert sdpa_backend(q, k, v, None, True, SM90) == "flash"
        assert sdpa_backend(q, k, v, torch.empty(2, 1, 16, 16, dtype=torch.bfloat16), False, SM90) == "efficient"
        strided_bias = torch.empty(2, 16, 16, 4).permute(0, 3, 1, 2)  # T5's position bias layout
        q, k, v = _qkv(torch.float32)
        assert sdpa_backend(q, k, v, strided_bias, False, SM90) == "math"
        q, k, v = _qkv(torch.float32, d=6)  # head size not a multiple of 4
        assert sdpa_backend(q, k, v, None, False, SM90) == "math"


def test_efficient_bias_is_padded_when_unaligned():
    with FakeTensorMode():
        q, k, _ = _qkv(torch.float32)
        aligned = torch.empty(2, 4, 16, 16)
        assert _efficient_bias(aligned, q, k).untyped_storage().nbytes() == aligned.untyped_storage().nbytes()
        odd = torch.empty(2, 4, 16, 20)[..., :16]  # rows 20 elements apart: not 8-aligned
        padded = _efficient_bias(odd, q, k)
        assert padded.shape == (2, 4, 16, 16) and padded.untyped_storage().nbytes() == 2 * 4 * 16 * 24 * 4


def test_dropout_keeps_a_bool_mask_and_is_restored():
    x = torch.randn(64, 64, requires_grad=True)

    def saved_bytes() -> int:
        counter = SavedTensorCounter(torch.nn.Linear(1, 1))
        with counter.track():
            F.dropout(x * 1.0, 0.1, True).sum().backward()
        return counter.total

    assert saved_bytes() == 64 * 64 * 4  # the CPU kernel keeps a float mask
    with cuda_kernels():
        assert saved_bytes() == 64 * 64  # CUDA's fused kernel: one byte per element
    assert F.dropout.__module__ == "torch.nn.functional"  # swapped back
