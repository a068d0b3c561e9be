"""The dtypes the kernels take, and their fp32 -> 16-bit conversion.

Kernels load 16-bit values and convert them to fp32 before any arithmetic, and round results
back with `to_kind`: fp32 -> bf16 rounds to nearest even with integer arithmetic, which is what
torch and a GPU's `cvt.rn` do, and what Triton's interpreter's own cast (which truncates, and
which cannot compute on bf16 at all: it keeps it as raw uint16) does not. So the interpreter on
a CPU and the compiled kernel on a GPU give the same bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# the codes kernels take as constexpr `*_KIND` arguments
KINDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def kind(dtype: torch.dtype) -> int:
    if dtype not in KINDS:
        raise TypeError(f"the Triton kernels take fp32, fp16 or bf16 tensors, not {dtype}")
    return KINDS[dtype]


@triton.jit
def to_kind(v, KIND: tl.constexpr):
    """fp32 `v` in the dtype coded by KIND (0 fp32, 1 fp16, 2 bf16), rounded to nearest even."""
    if KIND == 2:
        b = v.to(tl.uint32, bitcast=True)
        r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        r = tl.where(v != v, 0x7FC0, r)  # NaN: torch's canonical bf16 NaN
        out = r.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    elif KIND == 1:
        out = v.to(tl.float16)
    else:
        out = v
    return out
