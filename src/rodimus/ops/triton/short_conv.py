"""Short convolution through the Triton kernels: same signature as :func:`rodimus.ops.short_conv.short_conv`.

The forward reads x once and writes y once; the backward recomputes the pre-activation from x, so
autograd keeps only the inputs (the backward holds one x-sized dpre buffer while it runs). The final
state (the last W-1 inputs of each sequence) is a small gather done here, with its gradient added to
dx / d initial_state by hand rather than through a full-size temporary.
"""

from __future__ import annotations

import torch

from rodimus.ops.packing import derived, document_starts
from rodimus.ops.short_conv import _check, short_conv
from rodimus.ops.triton import short_conv_kernels as kern
from rodimus.ops.triton._common import cdiv, column_sum, next_pow2

# (rows, max channels, warps) per program of each kernel. dpre: 2 warps, H200 2026-11-29 (sixth session,
# benchmarks/sweep_short_conv.py, packed 1x16384 D 2048 bf16 fwd+bwd as CUDA graphs): 347 us vs 406 with 4
_BLOCKS = {"fwd": (64, 128, 4), "dpre": (64, 64, 2), "dx": (64, 128, 4)}
_TARGET_PROGRAMS = 4096  # backward: merge row tiles per program above this (smaller partial sums)


def _row_major(t: torch.Tensor) -> torch.Tensor:
    """t itself when its channel axis is unit-stride (the kernels take batch/time strides), else a copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _blocks(kind: str, D: int, W: int) -> tuple[int, int, int]:
    bt, bd, warps = _BLOCKS[kind]
    if kind == "dpre":  # the first tile holds every row that d initial_state reads
        bt = max(bt, next_pow2(W, 16))
    return bt, min(bd, next_pow2(D, 16)), warps


def _bwd_steps(n_tiles: int, n_other: int) -> int:
    """Row tiles per backward program: 1 until there are plenty of programs, then up to 256."""
    return max(1, min(256, (n_tiles * n_other) // _TARGET_PROGRAMS))


def _positions(cu_seqlens: torch.Tensor, T: int, device) -> torch.Tensor:
    """int32 [T]: each packed row's position inside its document."""

    def make():
        return (torch.arange(T, device=device) - document_starts(cu_seqlens, T, device)).to(torch.int32)

    return derived(cu_seqlens, ("conv_pos", T, device), make)


def _final_index(cu_seqlens: torch.Tensor, W: int, device):
    """Packed rows [N, W-1] of each document's last W-1 inputs and whether each lies inside the document."""

    def make():
        cu = cu_seqlens.to(device).long()
        j = torch.arange(W - 1, device=device)
        idx = cu[1:, None] - (W - 1) + j[None, :]
        valid = j[None, :] >= (W - 1 - cu.diff()[:, None])
        return idx.clamp_min(0), valid

    return derived(cu_seqlens, ("conv_final", W, device), make)


def _final_state(x, h0, cu_seqlens, W):
    """[N, D, W-1] in x's dtype, as a fresh tensor."""
    B, T, D = x.shape
    if cu_seqlens is not None:
        idx, valid = _final_index(cu_seqlens, W, x.device)
        if T == 0:
            return x.new_zeros(idx.shape[0], D, W - 1)
        fin = x[0][idx] * valid[..., None].to(x.dtype)  # [N, W-1, D]
        return fin.transpose(1, 2).contiguous()
    n = min(T, W - 1)
    tail = x[:, T - n :].transpose(1, 2)
    if n == W - 1:
        return tail.clone(memory_format=torch.contiguous_format)
    prev = h0[:, :, T:].to(x.dtype) if h0 is not None else x.new_zeros(B, D, W - 1 - T)
    return torch.cat([prev, tail], dim=-1)


class _ShortConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_in, weight, bias, h0, cu_seqlens, silu, output_final_state=True, pass_input=False):
        x = _row_major(x_in)
        w = weight.contiguous()
        B, T, D = x.shape
        W = w.shape[1]
        pos = _positions(cu_seqlens, T, x.device) if cu_seqlens is not None else None
        h0t = h0.transpose(1, 2).contiguous() if h0 is not None else None  # [B, W-1, D]: rows like x's
        y = torch.empty(B, T, D, device=x.device, dtype=x.dtype)
        BT, BD, warps = _blocks("fwd", D, W)
        if T and D:
            kern._fwd[(cdiv(T, BT), cdiv(D, BD), B)](
                x, w, bias if bias is not None else w, h0t if h0t is not None else w, pos if pos is not None else w,
                y, T, D, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                *(h0t.stride()[:2] if h0t is not None else (0, 0)),
                W=W, BT=BT, BD=BD, HAS_BIAS=bias is not None, HAS_INIT=h0 is not None,
                PACKED=pos is not None, SILU=silu, num_warps=warps,
            )  # fmt: skip
        final = _final_state(x, h0, cu_seqlens, W) if output_final_state else None
        ctx.save_for_backward(x, w, bias, h0t, pos, cu_seqlens)
        ctx.silu = silu
        ctx.h0_dtype = h0.dtype if h0 is not None else None
        ctx.set_materialize_grads(False)
        return (y, final, x_in) if pass_input else (y, final)

    @staticmethod
    def backward(ctx, dy, dfinal, dx_pass=None):
        x, w, bias, h0t, pos, cu_seqlens = ctx.saved_tensors
        B, T, D = x.shape
        W = w.shape[1]
        f32 = dict(device=x.device, dtype=torch.float32)
        want_dh0 = h0t is not None and ctx.needs_input_grad[3]
        dx = torch.empty_like(x, memory_format=torch.contiguous_format)
        dh0t = torch.zeros(B, W - 1, D, **f32) if want_dh0 else None
        if dy is None or not (T and D):
            if dx_pass is not None:
                dx.copy_(dx_pass)
            else:
                dx.zero_()
            dw = torch.zeros(D, W, **f32)
            db = torch.zeros(D, **f32) if bias is not None else None
        else:
            dr = dx_pass.contiguous() if dx_pass is not None else None
            dw, db = _backward(x, w, bias, h0t, pos, _row_major(dy), dx, dh0t, ctx.silu, dr)
        dh0 = dh0t.transpose(1, 2) if dh0t is not None else None  # [B, D, W-1] view
        if dfinal is not None and W > 1:
            _add_final_grad(dfinal, dx, dh0, cu_seqlens, W)
        return (
            dx,
            dw.to(w.dtype),
            db.to(bias.dtype) if db is not None else None,
            dh0.to(ctx.h0_dtype).contiguous() if dh0 is not None else None,
            None,
            None,
            None,
            None,
        )


def _backward(x, w, bias, h0t, pos, dy, dx, dh0t, silu, dr=None):
    """Fill dx (plus dr, the passed-through input's gradient, when given) and dh0t; return float32
    dweight [D, W] and dbias (or None)."""
    B, T, D = x.shape
    W = w.shape[1]
    f32 = dict(device=x.device, dtype=torch.float32)
    BT, BD, warps = _blocks("dpre", D, W)
    n_tiles, n_d = cdiv(T, BT), cdiv(D, BD)
    steps = _bwd_steps(n_tiles, n_d * B)
    n_prog = cdiv(n_tiles, steps)
    WP = next_pow2(W, 1)
    dwp = torch.empty(n_prog * B, WP, D, **f32)
    dbp = torch.empty(n_prog * B, D, **f32) if bias is not None else dwp
    dpre = torch.empty(B, T, D, device=x.device, dtype=x.dtype)
    kern._bwd_dpre[(n_prog, n_d, B)](
        x, w, bias if bias is not None else w, h0t if h0t is not None else w, pos if pos is not None else w,
        dy, dpre, dwp, dbp, dh0t if dh0t is not None else dwp,
        T, D, steps, x.stride(0), x.stride(1), dy.stride(0), dy.stride(1),
        *(h0t.stride()[:2] if h0t is not None else (0, 0)),
        W=W, WP=WP, BT=BT, BD=BD, HAS_BIAS=bias is not None, HAS_INIT=h0t is not None,
        DH0=dh0t is not None, PACKED=pos is not None, SILU=silu, num_warps=warps,
    )  # fmt: skip
    BT, BD, warps = _blocks("dx", D, W)
    kern._bwd_dx[(cdiv(T, BT), cdiv(D, BD), B)](
        dpre, w, pos if pos is not None else w, dr if dr is not None else dx, dx, T, D, W=W, BT=BT, BD=BD,
        PACKED=pos is not None, HAS_RES=dr is not None, num_warps=warps,
    )  # fmt: skip
    dw = column_sum(dwp, torch.float32)[:W].t()
    return dw, (column_sum(dbp, torch.float32) if bias is not None else None)


def _add_final_grad(dfinal, dx, dh0, cu_seqlens, W):
    """The final state copies inputs; route its gradient back to them (small in-place adds)."""
    B, T, D = dx.shape
    g = dfinal.transpose(1, 2)  # [N, W-1, D]
    if cu_seqlens is not None:
        idx, valid = _final_index(cu_seqlens, W, dx.device)
        dx[0].index_put_((idx[valid],), g[valid].to(dx.dtype), accumulate=True)
        return
    n = min(T, W - 1)
    if n:
        dx[:, T - n :] += g[:, W - 1 - n :].to(dx.dtype)
    if n < W - 1 and dh0 is not None:
        dh0[:, :, T:] += dfinal[:, :, : W - 1 - n].float()


def short_conv_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    activation: str | None = "silu",
    output_final_state: bool = True,
    pass_input: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Fused short convolution (Triton); arguments and results as :func:`rodimus.ops.short_conv.short_conv`.

    Float64 inputs (gradcheck) go to the torch form; the kernels accumulate in float32.
    """
    _check(x, weight, bias, initial_state, cu_seqlens, activation)
    if any(t is not None and t.dtype == torch.float64 for t in (x, weight, bias, initial_state)):
        return short_conv(
            x, weight, bias, initial_state=initial_state, cu_seqlens=cu_seqlens, activation=activation,
            output_final_state=output_final_state, pass_input=pass_input,
        )
    return _ShortConvFunction.apply(
        x, weight, bias, initial_state, cu_seqlens, activation == "silu", output_final_state, pass_input
    )
