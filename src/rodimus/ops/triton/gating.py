"""Fused act(a) * x (same signature as :func:`rodimus.ops.gating.gate_mul`).

One read of a and x, one write, float32 inside; the backward recomputes act(a) instead of keeping it
(autograd's two-op form keeps act(a) and makes three more passes).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rodimus.ops.gating import check_gate_inputs, gate_mul, gate_mul_backward
from rodimus.ops.triton._common import rows_view as _rows
from rodimus.ops.triton._common import sigmoid

MAX_BLOCK = 2048


@triton.jit
def _fwd(A, X, Y, D, sa, sx, SILU: tl.constexpr, BLOCK: tl.constexpr):
    # one program: BLOCK columns of one row; sa, sx are row strides (a and x are often column slices)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < D
    a = tl.load(A + row * sa + cols, mask=m, other=0.0).to(tl.float32)
    x = tl.load(X + row * sx + cols, mask=m, other=0.0).to(tl.float32)
    s = sigmoid(a)
    f = a * s if SILU else s
    tl.store(Y + row * D + cols, (f * x).to(Y.dtype.element_ty), mask=m)


@triton.jit
def _bwd(A, X, DY, DA, DX, Y, D, sa, sx, SILU: tl.constexpr, STORE_Y: tl.constexpr, BLOCK: tl.constexpr):
    # STORE_Y: also write the forward's product (for a caller that did not keep it)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < D
    a = tl.load(A + row * sa + cols, mask=m, other=0.0).to(tl.float32)
    x = tl.load(X + row * sx + cols, mask=m, other=0.0).to(tl.float32)
    dy = tl.load(DY + row * D + cols, mask=m, other=0.0).to(tl.float32)
    s = sigmoid(a)
    if SILU:
        f = a * s
        df = s * (1.0 + a * (1.0 - s))
    else:
        f = s
        df = s * (1.0 - s)
    tl.store(DA + row * D + cols, (dy * x * df).to(DA.dtype.element_ty), mask=m)
    tl.store(DX + row * D + cols, (dy * f).to(DX.dtype.element_ty), mask=m)
    if STORE_Y:
        tl.store(Y + row * D + cols, (f * x).to(Y.dtype.element_ty), mask=m)


def _grid(N: int, D: int) -> tuple[tuple[int, int], int]:
    block = min(MAX_BLOCK, triton.next_power_of_2(D))
    return (N, triton.cdiv(D, block)), block


class _GateMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, x, silu):
        shape, D = x.shape, x.shape[-1]
        a2, x2 = _rows(a), _rows(x)
        N = x2.shape[0]
        y = torch.empty(N, D, device=x.device, dtype=torch.promote_types(a.dtype, x.dtype))
        grid, block = _grid(N, D)
        if y.numel():
            _fwd[grid](a2, x2, y, D, a2.stride(0), x2.stride(0), SILU=silu, BLOCK=block, num_warps=4)
        ctx.save_for_backward(a2, x2)
        ctx.meta = (silu, shape)
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        a2, x2 = ctx.saved_tensors
        silu, shape = ctx.meta
        da, dx = _backward(a2, x2, dy, silu)
        return da.view(shape), dx.view(shape), None


def _backward(
    a2: torch.Tensor, x2: torch.Tensor, dy: torch.Tensor, silu: bool, with_output: bool = False
) -> tuple[torch.Tensor, ...]:
    """(da, dx) [N, D] for row views a2, x2 and the output gradient dy; ``with_output``: and y."""
    N, D = x2.shape
    dy = dy.reshape(N, D).contiguous()
    da = torch.empty(N, D, device=a2.device, dtype=a2.dtype)
    dx = torch.empty(N, D, device=x2.device, dtype=x2.dtype)
    y = torch.empty(N, D, device=x2.device, dtype=torch.promote_types(a2.dtype, x2.dtype)) if with_output else dx
    grid, block = _grid(N, D)
    if dy.numel():
        _bwd[grid](
            a2, x2, dy, da, dx, y, D, a2.stride(0), x2.stride(0), SILU=silu, STORE_Y=with_output, BLOCK=block,
            num_warps=4,
        )  # fmt: skip
    return (da, dx, y) if with_output else (da, dx)


def gate_mul_triton(a: torch.Tensor, x: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """Fused :func:`rodimus.ops.gating.gate_mul`; float64 goes to the torch form."""
    check_gate_inputs(a, x, activation)
    if torch.float64 in (a.dtype, x.dtype):
        return gate_mul(a, x, activation)
    return _GateMul.apply(a, x, activation == "silu")


def gate_mul_backward_triton(
    a: torch.Tensor, x: torch.Tensor, dy: torch.Tensor, activation: str = "sigmoid", with_output: bool = False
) -> tuple[torch.Tensor, ...]:
    """Fused :func:`rodimus.ops.gating.gate_mul_backward` (``with_output``: y comes out of the same pass);
    float64 goes to the torch form."""
    check_gate_inputs(a, x, activation)
    if torch.float64 in (a.dtype, x.dtype):
        return gate_mul_backward(a, x, dy, activation, with_output)
    out = _backward(_rows(a), _rows(x), dy, activation == "silu", with_output)
    return tuple(t.view(x.shape) for t in out)
