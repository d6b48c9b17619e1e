"""Fused act(a) * x (same signature as :func:`rodimus.ops.gating.gate_mul`), and the input gate with its
rank-r pre-activation formed inside the kernel (:func:`rodimus.ops.gating.low_rank_gate_mul`).

One read of a and x, one write, float32 inside; the backward recomputes act(a) instead of keeping it
(autograd's two-op form keeps act(a) and makes three more passes). The low-rank form does not read a at
all: a = xa W^T + b is a dot of width r per tile, which saves the up projection's [rows, width] write and
its read in the forward and again in the backward; its backward also sums d xa = d a W over the row's
column tiles, so no GEMM reads d a back for it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rodimus.ops.gating import (
    check_gate_inputs,
    check_low_rank_inputs,
    gate_mul,
    gate_mul_backward,
    low_rank_gate_mul,
    low_rank_gate_mul_backward,
)
from rodimus.ops.triton._common import cdiv, mm, next_pow2, sigmoid
from rodimus.ops.triton._common import rows_view as _rows

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


def _use_torch(*ts: torch.Tensor | None) -> bool:
    """float64 inputs go to the torch forms (the kernels compute in float32)."""
    return any(t is not None and t.dtype == torch.float64 for t in ts)


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
    if _use_torch(a, x):
        return gate_mul(a, x, activation)
    return _GateMul.apply(a, x, activation == "silu")


def gate_mul_backward_triton(
    a: torch.Tensor, x: torch.Tensor, dy: torch.Tensor, activation: str = "sigmoid", with_output: bool = False
) -> tuple[torch.Tensor, ...]:
    """Fused :func:`rodimus.ops.gating.gate_mul_backward` (``with_output``: y comes out of the same pass);
    float64 goes to the torch form."""
    check_gate_inputs(a, x, activation)
    if _use_torch(a, x):
        return gate_mul_backward(a, x, dy, activation, with_output)
    out = _backward(_rows(a), _rows(x), dy, activation == "silu", with_output)
    return tuple(t.view(x.shape) for t in out)


# low-rank gate tiles: [BM rows, BN columns] (the backward walks a row block's columns BN at a time)
LOW_RANK_LAUNCH = {"BM": 64, "BN": 128, "num_warps": 4, "bwd_stages": 2}


@triton.jit
def _low_rank_a(xa, W, Bias, cols, mc, rk, mk, R, HAS_B: tl.constexpr, LOWP: tl.constexpr):
    # a = xa W^T + b for one [BM, BN] tile, float32; also W^T's tile [BR, BN] for the caller's d xa
    wt = tl.load(W + cols[None, :].to(tl.int64) * R + rk[:, None], mask=mk[:, None] & mc[None, :], other=0.0)
    a = mm(xa, wt, LOWP)
    if HAS_B:
        a += tl.load(Bias + cols, mask=mc, other=0.0).to(tl.float32)[None, :]
    return a, wt


@triton.jit
def _low_rank_fwd(XA, W, Bias, X, Y, N, D, R, sxa, sx, HAS_B: tl.constexpr, LOWP: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BR)
    mr, mc, mk = rows < N, cols < D, rk < R
    r64 = rows.to(tl.int64)[:, None]
    xa = tl.load(XA + r64 * sxa + rk[None, :], mask=mr[:, None] & mk[None, :], other=0.0)
    a, _ = _low_rank_a(xa, W, Bias, cols, mc, rk, mk, R, HAS_B, LOWP)
    m = mr[:, None] & mc[None, :]
    x = tl.load(X + r64 * sx + cols[None, :], mask=m, other=0.0).to(tl.float32)
    tl.store(Y + r64 * D + cols[None, :], (sigmoid(a) * x).to(Y.dtype.element_ty), mask=m)


@triton.jit
def _low_rank_bwd(XA, W, Bias, X, DU, WD, DA, DX, DXA, N, D, R, sxa, sx, sdu, HAS_B: tl.constexpr,
                  HAS_WD: tl.constexpr, LOWP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                  BR: tl.constexpr, STAGES: tl.constexpr):
    # one program owns BM whole rows, so d xa = sum over column tiles of d a W is complete in registers;
    # HAS_WD: a second walk over the columns writes dx = du * s + d xa W_down once (no GEMM adding into it)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    rk = tl.arange(0, BR)
    mr, mk = rows < N, rk < R
    r64 = rows.to(tl.int64)[:, None]
    xa = tl.load(XA + r64 * sxa + rk[None, :], mask=mr[:, None] & mk[None, :], other=0.0)
    dxa = tl.zeros([BM, BR], tl.float32)
    for c0 in tl.range(0, D, BN, num_stages=STAGES):
        cols = c0 + tl.arange(0, BN)
        mc = cols < D
        a, wt = _low_rank_a(xa, W, Bias, cols, mc, rk, mk, R, HAS_B, LOWP)
        m = mr[:, None] & mc[None, :]
        x = tl.load(X + r64 * sx + cols[None, :], mask=m, other=0.0).to(tl.float32)
        du = tl.load(DU + r64 * sdu + cols[None, :], mask=m, other=0.0).to(tl.float32)
        s = sigmoid(a)
        da = (du * x * s * (1.0 - s)).to(DA.dtype.element_ty)  # masked entries are 0: du and x are
        tl.store(DA + r64 * D + cols[None, :], da, mask=m)
        if not HAS_WD:
            tl.store(DX + r64 * D + cols[None, :], (du * s).to(DX.dtype.element_ty), mask=m)
        dxa += mm(da, tl.trans(wt), LOWP)
    dxa_out = dxa.to(DXA.dtype.element_ty)
    tl.store(DXA + r64 * R + rk[None, :], dxa_out, mask=mr[:, None] & mk[None, :])
    if HAS_WD:
        for c0 in tl.range(0, D, BN, num_stages=STAGES):
            cols = c0 + tl.arange(0, BN)
            mc = cols < D
            a, _ = _low_rank_a(xa, W, Bias, cols, mc, rk, mk, R, HAS_B, LOWP)
            m = mr[:, None] & mc[None, :]
            du = tl.load(DU + r64 * sdu + cols[None, :], mask=m, other=0.0).to(tl.float32)
            wd = tl.load(WD + rk[:, None].to(tl.int64) * D + cols[None, :], mask=mk[:, None] & mc[None, :],
                         other=0.0)
            dx = du * sigmoid(a) + mm(dxa_out, wd, LOWP)
            tl.store(DX + r64 * D + cols[None, :], dx.to(DX.dtype.element_ty), mask=m)


def _low_rank_args(xa, w, b, x):
    xa2, x2 = _rows(xa), _rows(x)
    N, D = x2.shape
    w = w.contiguous()
    lowp = xa.dtype in (torch.bfloat16, torch.float16)
    return xa2, w, (b if b is not None else w), x2, N, D, w.shape[1], lowp


def low_rank_gate_mul_triton(
    xa: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, x: torch.Tensor
) -> torch.Tensor:
    """Fused :func:`rodimus.ops.gating.low_rank_gate_mul` (no autograd: its caller,
    :func:`rodimus.layers.recompute.low_rank_gate`, owns the backward); float64 goes to the torch form."""
    check_low_rank_inputs(xa, w, b, x)
    if _use_torch(xa, w, b, x):
        return low_rank_gate_mul(xa, w, b, x)
    xa2, w, bias, x2, N, D, R, lowp = _low_rank_args(xa, w, b, x)
    y = torch.empty(N, D, device=x.device, dtype=torch.promote_types(xa.dtype, x.dtype))
    L = LOW_RANK_LAUNCH
    if y.numel():
        _low_rank_fwd[(cdiv(N, L["BM"]), cdiv(D, L["BN"]))](
            xa2, w, bias, x2, y, N, D, R, xa2.stride(0), x2.stride(0), HAS_B=b is not None, LOWP=lowp,
            BM=L["BM"], BN=L["BN"], BR=next_pow2(R), num_warps=L["num_warps"],
        )  # fmt: skip
    return y.view(x.shape)


def low_rank_gate_mul_backward_triton(
    xa: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    x: torch.Tensor,
    du: torch.Tensor,
    w_down: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused :func:`rodimus.ops.gating.low_rank_gate_mul_backward`; float64 goes to the torch form."""
    check_low_rank_inputs(xa, w, b, x, w_down)
    if _use_torch(xa, w, b, x, du, w_down):
        return low_rank_gate_mul_backward(xa, w, b, x, du, w_down)
    xa2, w, bias, x2, N, D, R, lowp = _low_rank_args(xa, w, b, x)
    du2 = _rows(du.reshape(x.shape))
    da = torch.empty(N, D, device=x.device, dtype=xa.dtype)
    dx = torch.empty(N, D, device=x.device, dtype=x.dtype)
    dxa = torch.empty(N, R, device=x.device, dtype=w.dtype)
    L = LOW_RANK_LAUNCH
    if N:
        _low_rank_bwd[(cdiv(N, L["BM"]),)](
            xa2, w, bias, x2, du2, w_down.contiguous() if w_down is not None else w, da, dx, dxa, N, D, R,
            xa2.stride(0), x2.stride(0), du2.stride(0), HAS_B=b is not None, HAS_WD=w_down is not None,
            LOWP=lowp, BM=L["BM"], BN=L["BN"], BR=next_pow2(R), STAGES=L["bwd_stages"], num_warps=L["num_warps"],
        )  # fmt: skip
    return da.view(x.shape), dx.view(x.shape), dxa.view(xa.shape)
