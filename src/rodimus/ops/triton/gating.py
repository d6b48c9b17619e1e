"""Fused act(a) * x (same signature as :func:`rodimus.ops.gating.gate_mul`).

One read of a and x, one write, float32 inside; the backward recomputes act(a) instead of keeping it
(autograd's two-op form keeps act(a) and makes three more passes).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rodimus.ops.gating import check_gate_inputs, gate_mul
from rodimus.ops.triton._common import sigmoid

BLOCK = 2048


@triton.jit
def _fwd(A, X, Y, n, SILU: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    a = tl.load(A + offs, mask=m, other=0.0).to(tl.float32)
    x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
    s = sigmoid(a)
    f = a * s if SILU else s
    tl.store(Y + offs, (f * x).to(Y.dtype.element_ty), mask=m)


@triton.jit
def _bwd(A, X, DY, DA, DX, n, SILU: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    a = tl.load(A + offs, mask=m, other=0.0).to(tl.float32)
    x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=m, other=0.0).to(tl.float32)
    s = sigmoid(a)
    if SILU:
        f = a * s
        df = s * (1.0 + a * (1.0 - s))
    else:
        f = s
        df = s * (1.0 - s)
    tl.store(DA + offs, (dy * x * df).to(DA.dtype.element_ty), mask=m)
    tl.store(DX + offs, (dy * f).to(DX.dtype.element_ty), mask=m)


class _GateMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, x, silu):
        a, x = a.contiguous(), x.contiguous()
        y = torch.empty_like(x, dtype=torch.promote_types(a.dtype, x.dtype))
        n = y.numel()
        if n:
            _fwd[(triton.cdiv(n, BLOCK),)](a, x, y, n, SILU=silu, BLOCK=BLOCK, num_warps=8)
        ctx.save_for_backward(a, x)
        ctx.silu = silu
        return y

    @staticmethod
    def backward(ctx, dy):
        a, x = ctx.saved_tensors
        dy = dy.contiguous()
        da, dx = torch.empty_like(a), torch.empty_like(x)
        n = a.numel()
        if n:
            _bwd[(triton.cdiv(n, BLOCK),)](a, x, dy, da, dx, n, SILU=ctx.silu, BLOCK=BLOCK, num_warps=8)
        return da, dx, None


def gate_mul_triton(a: torch.Tensor, x: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """Fused :func:`rodimus.ops.gating.gate_mul`; float64 goes to the torch form."""
    check_gate_inputs(a, x, activation)
    if torch.float64 in (a.dtype, x.dtype):
        return gate_mul(a, x, activation)
    return _GateMul.apply(a, x, activation == "silu")
