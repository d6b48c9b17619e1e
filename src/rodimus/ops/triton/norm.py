"""Fused Rodimus output stage: RMSNorm((o + d * x) * silu(gate)) * weight in one pass per direction.

The same kernels without gate and skip are the blocks' plain RMSNorm.

Same signature as :func:`rodimus.ops.norm.gated_rms_norm`. The torch form makes about ten float32
passes over [rows, d_inner] and autograd keeps most of them; here the forward reads o, x and gate once
and writes y plus one float32 rstd per row, and the backward recomputes everything else from those.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rodimus.ops.norm import (
    check_gated_norm_inputs,
    gated_rms_norm,
    gated_rms_norm_backward,
    rms_norm,
    rms_norm_pass,
)
from rodimus.ops.triton._common import INTERPRET, cdiv, column_sum, sigmoid
from rodimus.ops.triton._common import rows_view as _rows


@triton.jit
def _fwd(
    O, X, G, W, S, Y, RSTD, D, so, sx, sg, eps,
    HAS_SKIP: tl.constexpr, HAS_GATE: tl.constexpr, BD: tl.constexpr,
):
    # so, sx, sg: row strides of o, x, gate (gate is usually a column slice of a wider projection)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BD)
    msk = cols < D
    off = row * D + cols
    m = tl.load(O + row * so + cols, mask=msk, other=0.0).to(tl.float32)
    if HAS_SKIP:
        x = tl.load(X + row * sx + cols, mask=msk, other=0.0).to(tl.float32)
        m += x * tl.load(S + cols, mask=msk, other=0.0).to(tl.float32)
    z = m
    if HAS_GATE:
        g = tl.load(G + row * sg + cols, mask=msk, other=0.0).to(tl.float32)
        z = m * g * sigmoid(g)
    rstd = 1.0 / tl.sqrt(tl.sum(z * z, axis=0) / D + eps)
    w = tl.load(W + cols, mask=msk, other=0.0).to(tl.float32)
    tl.store(Y + off, (z * rstd * w).to(Y.dtype.element_ty), mask=msk)
    tl.store(RSTD + row, rstd)


@triton.jit
def _bwd(
    O, X, G, W, S, RSTD, DY, DR, DO, DX, DG, DWP, DSP, Y, N, D, so, sx, sg, ROWS, eps,
    HAS_SKIP: tl.constexpr, HAS_GATE: tl.constexpr, HAS_RES: tl.constexpr, STORE_Y: tl.constexpr,
    BD: tl.constexpr,
):
    # one program walks ROWS consecutive rows and keeps its weight/skip gradient partial sums in registers;
    # HAS_RES: DR (o's gradient through the pass-through output, the residual stream's) is added to do;
    # STORE_Y: no forward ran (its output was not kept): rstd is recomputed here and y is written too
    pid = tl.program_id(0)
    cols = tl.arange(0, BD)
    msk = cols < D
    w = tl.load(W + cols, mask=msk, other=0.0).to(tl.float32)
    if HAS_SKIP:
        s = tl.load(S + cols, mask=msk, other=0.0).to(tl.float32)
    dw = tl.zeros([BD], dtype=tl.float32)
    ds = tl.zeros([BD], dtype=tl.float32)
    r0 = pid.to(tl.int64) * ROWS
    for i in range(0, ROWS):
        row = r0 + i
        if row < N:
            off = row * D + cols  # dy and the gradients are contiguous
            m = tl.load(O + row * so + cols, mask=msk, other=0.0).to(tl.float32)
            if HAS_SKIP:
                x = tl.load(X + row * sx + cols, mask=msk, other=0.0).to(tl.float32)
                m += x * s
            a = tl.full([BD], 1.0, dtype=tl.float32)
            if HAS_GATE:
                g = tl.load(G + row * sg + cols, mask=msk, other=0.0).to(tl.float32)
                sgm = sigmoid(g)
                a = g * sgm
            if STORE_Y:
                z = m * a
                rstd = 1.0 / tl.sqrt(tl.sum(z * z, axis=0) / D + eps)
            else:
                rstd = tl.load(RSTD + row)
            zhat = m * a * rstd
            if STORE_Y:
                tl.store(Y + off, (zhat * w).to(Y.dtype.element_ty), mask=msk)
            dy = tl.load(DY + off, mask=msk, other=0.0).to(tl.float32)
            dzhat = dy * w
            dw += dy * zhat
            dz = rstd * (dzhat - zhat * (tl.sum(dzhat * zhat, axis=0) / D))
            dm = dz * a
            if HAS_GATE:
                tl.store(DG + off, (dz * m * sgm * (1.0 + g * (1.0 - sgm))).to(DG.dtype.element_ty), mask=msk)
            if HAS_SKIP:
                tl.store(DX + off, (dm * s).to(DX.dtype.element_ty), mask=msk)
                ds += dm * x
            if HAS_RES:
                dm += tl.load(DR + off, mask=msk, other=0.0).to(tl.float32)
            tl.store(DO + off, dm.to(DO.dtype.element_ty), mask=msk)
    tl.store(DWP + pid * D + cols, dw, mask=msk)
    if HAS_SKIP:
        tl.store(DSP + pid * D + cols, ds, mask=msk)


def _launch_cfg(D: int) -> tuple[int, int]:
    BD = triton.next_power_of_2(D)
    return BD, (1 if INTERPRET else min(16, max(1, BD // 256)))


class _GatedNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o, gate, weight, eps, skip_x, skip_weight, out_dtype=None, pass_o=False):
        """``pass_o``: also return o itself, whose gradient the backward kernel adds to o's (see
        :func:`rms_norm_pass_triton`)."""
        shape, D = o.shape, o.shape[-1]
        has_skip, has_gate = skip_x is not None, gate is not None
        o2, g2, x2, s = _row_views(o, gate, weight, skip_x, skip_weight)
        N = o2.shape[0]
        y = torch.empty(N, D, device=o.device, dtype=out_dtype or o.dtype)
        rstd = torch.empty(N, device=o.device, dtype=torch.float32)
        BD, warps = _launch_cfg(D)
        if N:
            _fwd[(N,)](
                o2, x2, g2, weight, s, y, rstd, D, o2.stride(0), x2.stride(0), g2.stride(0), eps,
                HAS_SKIP=has_skip, HAS_GATE=has_gate, BD=BD, num_warps=warps,
            )
        ctx.save_for_backward(o2, x2, g2, weight, s, rstd)
        ctx.meta = (shape, has_skip, has_gate)
        return (y.view(shape), o) if pass_o else y.view(shape)

    @staticmethod
    def backward(ctx, dy, do_pass=None):
        o2, x2, g2, weight, s, rstd = ctx.saved_tensors
        shape, has_skip, has_gate = ctx.meta
        _, do, dg, dw, dx, ds = _backward(o2, x2, g2, weight, s, rstd, dy, do_pass, has_skip, has_gate, 0.0, shape)
        return do, dg, dw, None, dx, ds, None, None


def _row_views(o, gate, weight, skip_x, skip_weight):
    """(o, gate, skip_x, skip weight) as the kernels take them; an absent one is a stand-in never read."""
    o2 = _rows(o)
    g2 = _rows(gate) if gate is not None else o2
    x2 = _rows(skip_x) if skip_x is not None else o2
    return o2, g2, x2, (skip_weight.contiguous() if skip_x is not None else weight)


def _backward(o2, x2, g2, weight, s, rstd, dy, do_pass, has_skip, has_gate, eps, shape):
    """Launch the backward kernel: (y, do, dgate, dweight, dskip_x, dskip_weight) in ``shape``, None for an
    absent input; ``rstd`` None: the kernel recomputes it and also writes y (o's dtype), else y is None."""
    N, D = o2.shape
    dy = dy.reshape(N, D).contiguous()
    has_res, store_y = do_pass is not None, rstd is None
    dr = do_pass.reshape(N, D).contiguous() if has_res else dy
    do = torch.empty(N, D, device=o2.device, dtype=o2.dtype)
    dg = torch.empty(N, D, device=o2.device, dtype=g2.dtype) if has_gate else do
    dx = torch.empty(N, D, device=o2.device, dtype=x2.dtype) if has_skip else do
    y = torch.empty(N, D, device=o2.device, dtype=o2.dtype) if store_y else do
    n_prog = max(1, min(N, 4 * _sm_count(o2.device)))
    rows = cdiv(N, n_prog) if N else 1
    n_prog = cdiv(N, rows) if N else 1
    part = torch.empty if N else torch.zeros  # every launched program writes its whole partial row
    dwp = part(n_prog, D, device=o2.device, dtype=torch.float32)
    dsp = part(n_prog, D, device=o2.device, dtype=torch.float32) if has_skip else dwp
    BD, warps = _launch_cfg(D)
    if N:
        _bwd[(n_prog,)](
            o2, x2, g2, weight, s, rstd if rstd is not None else dwp, dy, dr, do, dx, dg, dwp, dsp, y, N, D,
            o2.stride(0), x2.stride(0), g2.stride(0), rows, eps,
            HAS_SKIP=has_skip, HAS_GATE=has_gate, HAS_RES=has_res, STORE_Y=store_y, BD=BD, num_warps=warps,
        )  # fmt: skip
    dw = column_sum(dwp, weight.dtype)
    ds = column_sum(dsp, s.dtype) if has_skip else None
    dg = dg.view(shape) if has_gate else None
    dx = dx.view(shape) if has_skip else None
    return (y.view(shape) if store_y else None), do.view(shape), dg, dw, dx, ds


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def gated_rms_norm_triton(
    o: torch.Tensor,
    gate: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    skip_x: torch.Tensor | None = None,
    skip_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused :func:`rodimus.ops.norm.gated_rms_norm` (same arguments and result); float64 goes to torch."""
    check_gated_norm_inputs(o, gate, weight, skip_x, skip_weight)
    if _torch_form(o):
        return gated_rms_norm(o, gate, weight, eps, skip_x, skip_weight)
    return _GatedNorm.apply(o, gate, weight, float(eps), skip_x, skip_weight)


def gated_rms_norm_backward_triton(
    o: torch.Tensor,
    gate: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    skip_x: torch.Tensor | None,
    skip_weight: torch.Tensor | None,
    dy: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Fused :func:`rodimus.ops.norm.gated_rms_norm_backward`: one kernel pass reads o, gate, skip_x and
    dy once and writes y and the input gradients (the unfused recompute reads the inputs twice)."""
    check_gated_norm_inputs(o, gate, weight, skip_x, skip_weight)
    if _torch_form(o):
        return gated_rms_norm_backward(o, gate, weight, eps, skip_x, skip_weight, dy)
    if dy.shape != o.shape:
        raise ValueError(f"dy must have o's shape {tuple(o.shape)}, got {tuple(dy.shape)}")
    o2, g2, x2, s = _row_views(o, gate, weight, skip_x, skip_weight)
    return _backward(o2, x2, g2, weight, s, None, dy, None, skip_x is not None, gate is not None, float(eps), o.shape)


def rms_norm_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Fused :func:`rodimus.ops.norm.rms_norm` (same arguments and result): the gated kernel, no gate."""
    check_gated_norm_inputs(x, None, weight, None, None)
    if _torch_form(x):
        return rms_norm(x, weight, eps, out_dtype)
    return _GatedNorm.apply(x, None, weight, float(eps), None, None, out_dtype)


def rms_norm_pass_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused :func:`rodimus.ops.norm.rms_norm_pass`: the second output's gradient (the residual stream's)
    is added to x's inside the backward kernel, instead of by autograd in a separate pass."""
    check_gated_norm_inputs(x, None, weight, None, None)
    if _torch_form(x):
        return rms_norm_pass(x, weight, eps, out_dtype)
    return _GatedNorm.apply(x, None, weight, float(eps), None, None, out_dtype, True)


def _torch_form(x: torch.Tensor) -> bool:
    """Inputs the kernels do not take: float64 (gradcheck) and rows wider than one program's block."""
    return x.dtype == torch.float64 or x.shape[-1] > 65536
