"""Fused rotary embedding (same signature as :func:`rodimus.ops.rotary.rotary`).

One read and one write of x per direction, angles formed in float32 in the kernel; the torch form makes
~8 float32 passes (cast, halves, products, concatenation) each way. The backward is the same kernel
rotating by the negative angle.

The angle is reduced to [-pi, pi] first, subtracting n * 2*pi in two fused multiply-adds (2*pi split into
a float32 head and tail; exact to ~1e-7 for any position a float32 angle can hold), so accuracy at long
positions does not depend on how a Triton version lowers ``tl.cos``/``tl.sin`` (triton 3.9 calls
libdevice's ``__nv_cosf``, which handles large arguments on a slower path; an approximate lowering would
not).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

from rodimus.ops.rotary import check_rotary_inputs, rotary
from rodimus.ops.triton._common import head_rows_view

_TWO_PI_HI = float(np.float32(2 * math.pi))
_TWO_PI_LO = float(np.float32(2 * math.pi - _TWO_PI_HI))


@triton.jit
def _rotate(X, Y, POS, FREQ, HEADS, T, pos_stride, sx, SIGN: tl.constexpr, HALF: tl.constexpr,
            BH: tl.constexpr, BF: tl.constexpr, PI2_HI: tl.constexpr, PI2_LO: tl.constexpr):
    # one program: one row (b, t) and BH heads; POS is [B or 1, T] with row stride pos_stride; X's rows are
    # sx apart (a column slice of a fused q/k/v projection is read in place), Y is contiguous
    row = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BH + tl.arange(0, BH)
    f = tl.arange(0, BF)
    fm = f < HALF
    pos = tl.load(POS + (row // T) * pos_stride + row % T).to(tl.float32)
    ang = pos * tl.load(FREQ + f, mask=fm, other=0.0)
    turns = tl.floor(ang * (1.0 / PI2_HI) + 0.5)
    ang = tl.fma(-turns, PI2_LO, tl.fma(-turns, PI2_HI, ang))
    c = tl.cos(ang)[None, :]
    s = tl.sin(ang)[None, :] * SIGN
    m = (heads < HEADS)[:, None] & fm[None, :]
    col = heads[:, None] * (2 * HALF) + f[None, :]
    base = row * HEADS * (2 * HALF) + col
    x1 = tl.load(X + row * sx + col, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(X + row * sx + col + HALF, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + base, (x1 * c - x2 * s).to(Y.dtype.element_ty), mask=m)
    tl.store(Y + base + HALF, (x2 * c + x1 * s).to(Y.dtype.element_ty), mask=m)


def _launch(x: torch.Tensor, pos: torch.Tensor, freq: torch.Tensor, sign: float) -> torch.Tensor:
    B, T, heads, D = x.shape
    y = torch.empty(B, T, heads, D, device=x.device, dtype=x.dtype)
    if x.numel():
        xr = head_rows_view(x)
        BF = triton.next_power_of_2(D // 2)
        BH = max(1, min(triton.next_power_of_2(heads), 2048 // BF))
        _rotate[(B * T, triton.cdiv(heads, BH))](
            xr, y, pos, freq, heads, T, pos.stride(0) if pos.shape[0] > 1 else 0, xr.stride(0),
            SIGN=sign, HALF=D // 2, BH=BH, BF=BF, PI2_HI=_TWO_PI_HI, PI2_LO=_TWO_PI_LO, num_warps=4,
        )  # fmt: skip
    return y


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pos, freq):
        ctx.save_for_backward(pos, freq)
        return _launch(x, pos, freq, 1.0)

    @staticmethod
    def backward(ctx, dy):
        pos, freq = ctx.saved_tensors
        return _launch(dy, pos, freq, -1.0), None, None


def rotary_triton(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Fused :func:`rodimus.ops.rotary.rotary`; float64 goes to the torch form."""
    check_rotary_inputs(x, positions, inv_freq)
    if x.dtype == torch.float64:
        return rotary(x, positions, inv_freq)
    pos = (positions if positions.dim() == 2 else positions[None]).contiguous()  # [1 or B, T]
    return _Rotary.apply(x, pos, inv_freq.float().contiguous())
