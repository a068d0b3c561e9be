"""Dropout, ReLU and their backward with the mask as bits, one kernel each.

Bit layout: `wtacrs.savers.pack_bits`'s, the flattened mask 8 flags a byte, element 8j+b in bit b
of byte j (least significant first), the last byte padded with zeros. Each program handles
BYTES bytes, i.e. a [BYTES, 8] tile of elements ([BYTES, 2, 4] for dropout), so packing is a sum
of the flags shifted to their bit over the tile's trailing axes. Elementwise arithmetic runs in
fp32 in torch's order and rounds once, as torch's kernels do: ReLU and the masked gradient are
bitwise the reference's, and so is dropout given its mask (its random stream is Philox keyed by
a seed tensor, not torch's).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .dtypes import kind, to_kind

BYTES = 256  # bytes of mask per program: 2048 elements


@triton.jit
def _dropout_kernel(x_ptr, y_ptr, bits_ptr, seed_ptr, n, p, scale, KIND: tl.constexpr, BYTES: tl.constexpr):
    # a [BYTES, 2, 4] tile: byte j, half h, lane l is element 8j + 4h + l; one Philox call (four
    # uniforms) per half byte, as torch's own dropout draws four per call
    byte = tl.program_id(0).to(tl.int64) * BYTES + tl.arange(0, BYTES)
    half = tl.arange(0, 2)
    lane = tl.arange(0, 4)
    offs = byte[:, None, None] * 8 + half[None, :, None] * 4 + lane[None, None, :]
    inside = offs < n
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    r0, r1, r2, r3 = tl.rand4x(tl.load(seed_ptr), byte[:, None] * 2 + half[None, :])
    r = tl.where(
        lane[None, None, :] == 0,
        r0[:, :, None],
        tl.where(
            lane[None, None, :] == 1, r1[:, :, None], tl.where(lane[None, None, :] == 2, r2[:, :, None], r3[:, :, None])
        ),
    )
    keep = (r >= p) & inside
    y = (x * keep.to(tl.float32)) * scale  # torch's order: x * keep * (1 / (1 - p))
    tl.store(y_ptr + offs, to_kind(y, KIND), mask=inside)
    shifted = keep.to(tl.int32) << (half[None, :, None] * 4 + lane[None, None, :])
    packed = tl.sum(tl.sum(shifted, axis=2), axis=1)
    tl.store(bits_ptr + byte, packed.to(tl.uint8), mask=byte * 8 < n)


@triton.jit
def _relu_kernel(x_ptr, y_ptr, bits_ptr, n, BYTES: tl.constexpr):
    byte = tl.program_id(0).to(tl.int64) * BYTES + tl.arange(0, BYTES)
    bit = tl.arange(0, 8)
    offs = byte[:, None] * 8 + bit[None, :]
    inside = offs < n
    raw = tl.load(x_ptr + offs, mask=inside, other=0.0)
    x = raw.to(tl.float32)
    # torch.relu: negatives to +0, everything else (NaN, -0.0) passes through unchanged
    y = tl.where(x < 0, 0.0, raw)
    tl.store(y_ptr + offs, y, mask=inside)
    packed = tl.sum((x > 0).to(tl.int32) << bit[None, :], axis=1)
    tl.store(bits_ptr + byte, packed.to(tl.uint8), mask=byte * 8 < n)


@triton.jit
def _masked_grad_kernel(g_ptr, bits_ptr, out_ptr, n, scale, KIND: tl.constexpr, BYTES: tl.constexpr):
    byte = tl.program_id(0).to(tl.int64) * BYTES + tl.arange(0, BYTES)
    bit = tl.arange(0, 8)
    offs = byte[:, None] * 8 + bit[None, :]
    inside = offs < n
    packed = tl.load(bits_ptr + byte, mask=byte * 8 < n, other=0).to(tl.int32)
    m = ((packed[:, None] >> bit[None, :]) & 1).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, to_kind((g * m) * scale, KIND), mask=inside)


def _grid(n: int):
    return (triton.cdiv(triton.cdiv(n, 8), BYTES),)


def _nbytes(n: int) -> int:
    return -(-n // 8)


def dropout(x: torch.Tensor, p: float, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x * keep / (1 - p), keep packed as bits); keep = rand >= p, rand from Philox keyed by
    `seed` (a 1-element int64 tensor on x's device: read by the kernel, never by the host)."""
    y, bits, n = torch.empty_like(x), x.new_empty(_nbytes(x.numel()), dtype=torch.uint8), x.numel()
    if n:
        launch(
            _dropout_kernel[_grid(n)], x, y, bits, seed, n, float(p), 1.0 / (1.0 - p), KIND=kind(x.dtype), BYTES=BYTES
        )
    return y, bits


def relu(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(relu(x), (relu(x) > 0) packed as bits)."""
    y, bits, n = torch.empty_like(x), x.new_empty(_nbytes(x.numel()), dtype=torch.uint8), x.numel()
    if n:
        launch(_relu_kernel[_grid(n)], x, y, bits, n, BYTES=BYTES)
    return y, bits


def masked_grad(grad: torch.Tensor, bits: torch.Tensor, scale: float) -> torch.Tensor:
    """grad * mask * scale, the mask unpacked from `bits`."""
    out, n = torch.empty_like(grad), grad.numel()
    if n:
        launch(_masked_grad_kernel[_grid(n)], grad, bits, out, n, float(scale), KIND=kind(grad.dtype), BYTES=BYTES)
    return out
