"""Triton kernels of the causal depthwise short convolution + SiLU (forward and backward).

Tiles are [BT rows, BD channels] of one batch row; channels are the contiguous axis. Tap i of the
W-wide kernel reads x at lag W-1-i, i.e. the tile shifted up by ``lag`` rows: the shifted loads
overlap, so the repeats come from L1/L2 and HBM sees x about once. A tap is valid when its source
row is inside the sequence (else it reads the carried state, or zero) and, for packed documents,
when the row's position inside its document is at least ``lag`` (no reads across a document start).

* ``_fwd``: y = act(bias + sum of taps), float32 accumulation.
* ``_bwd_dpre``: recomputes the pre-activation (never stored by the forward), writes
  dpre = dy * act'(pre) in x's dtype, and per-program partial sums of dweight and dbias (reduced in
  torch) and, in the program holding row 0, the gradient of the carried state.
* ``_bwd_dx``: dx_t = sum_l w[W-1-l] * dpre_{t+l}, reading dpre shifted like the forward reads x.
  (An earlier single-kernel backward shifted dpre through a per-program L2 scratch with block barriers
  between tiles: 1.58x slower fwd+bwd than these two passes on an H200, B8 T2048 D4096; see
  docs/BENCHMARKS.md. Other tries: a 0/1-matrix shift on the tensor cores ~2x slower, re-reading dy/x
  per shift ~3x slower.)
"""

from __future__ import annotations

import triton
import triton.language as tl

from rodimus.ops.triton._common import sigmoid


@triton.jit
def _tap(x, h0, b, t0, s, pos_s, ok, rd, md, sxb, sxt, shb, sht,
         LAG: tl.constexpr, W: tl.constexpr, HAS_INIT: tl.constexpr, PACKED: tl.constexpr):
    """x at rows s - LAG as a float32 [BT, BD] tile; rows before the sequence read h0 (or zero).

    t0 is the tile's first row (a scalar), s its rows; h0 is laid out [B, W-1, D] like x.
    """
    src = s - LAG
    m = ok & (src >= 0)
    if PACKED:
        m = m & (pos_s >= LAG)
    ptr = x + b.to(tl.int64) * sxb + src.to(tl.int64)[:, None] * sxt + rd[None, :]
    v = tl.load(ptr, mask=m[:, None] & md[None, :], other=0.0).to(tl.float32)
    if HAS_INIT and LAG > 0:  # noqa: SIM102
        if t0 < LAG:  # only a sequence's first tile reads the carried state
            mh = ok & (src < 0)
            hp = h0 + b.to(tl.int64) * shb + (src + (W - 1))[:, None] * sht + rd[None, :]
            v += tl.load(hp, mask=mh[:, None] & md[None, :], other=0.0).to(tl.float32)
    return v


@triton.jit
def _pre(x, w, bias, h0, b, t0, s, pos_s, ok, rd, md, sxb, sxt, shb, sht,
         W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
         HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, PACKED: tl.constexpr):
    """The pre-activation bias + sum_i w_i x_{s-(W-1)+i} at rows s, float32 [BT, BD]."""
    acc = tl.zeros([BT, BD], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias + rd, mask=md, other=0.0).to(tl.float32)[None, :]
    for i in tl.static_range(W):
        wi = tl.load(w + rd * W + i, mask=md, other=0.0).to(tl.float32)
        xv = _tap(x, h0, b, t0, s, pos_s, ok, rd, md, sxb, sxt, shb, sht, W - 1 - i, W, HAS_INIT, PACKED)
        acc += xv * wi[None, :]
    return acc


@triton.jit
def _fwd(x, w, bias, h0, pos, y, T, D, sxb, sxt, syb, syt, shb, sht,
         W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr,
         HAS_INIT: tl.constexpr, PACKED: tl.constexpr, SILU: tl.constexpr):
    pid_t, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rt = pid_t * BT + tl.arange(0, BT)
    rd = pid_d * BD + tl.arange(0, BD)
    mt, md = rt < T, rd < D
    if PACKED:
        pos_t = tl.load(pos + rt, mask=mt, other=0)
    else:
        pos_t = rt
    pre = _pre(x, w, bias, h0, b, pid_t * BT, rt, pos_t, mt, rd, md, sxb, sxt, shb, sht, W, BT, BD, HAS_BIAS,
               HAS_INIT, PACKED)
    if SILU:
        pre = pre * sigmoid(pre)
    ptr = y + b.to(tl.int64) * syb + rt.to(tl.int64)[:, None] * syt + rd[None, :]
    tl.store(ptr, pre.to(y.dtype.element_ty), mask=mt[:, None] & md[None, :])


@triton.jit
def _bwd_dpre(x, w, bias, h0, pos, dy, dpre, dwp, dbp, dh0, T, D, STEPS, sxb, sxt, sgb, sgt, shb, sht,
              W: tl.constexpr, WP: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr,
              HAS_INIT: tl.constexpr, DH0: tl.constexpr, PACKED: tl.constexpr, SILU: tl.constexpr):
    """Backward pass 1: dpre = dy * act'(pre) written to ``dpre`` [B, T, D] (x's dtype).

    One program: STEPS consecutive [BT, BD] row tiles of one (channel block, batch row). dweight is
    reduced over each tile's rows into a [WP, BD] accumulator; dwp [n_prog_t * B, WP, D] and dbp
    [n_prog_t * B, D] take this program's float32 partial sums; dh0 [B, W-1, D] float32 (when DH0)
    is written by the program holding row 0.
    """
    pid_t, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rd = pid_d * BD + tl.arange(0, BD)
    md = rd < D
    rw = tl.arange(0, WP)
    jj = tl.arange(0, BT)
    dw_acc = tl.zeros([WP, BD], dtype=tl.float32)
    db_acc = tl.zeros([BD], dtype=tl.float32)
    for step in range(STEPS):
        tile = pid_t * STEPS + step
        t0 = tile * BT
        rt = t0 + jj
        mt = rt < T
        if PACKED:
            pos_t = tl.load(pos + rt, mask=mt, other=0)
        else:
            pos_t = rt
        pre = _pre(x, w, bias, h0, b, t0, rt, pos_t, mt, rd, md, sxb, sxt, shb, sht, W, BT, BD, HAS_BIAS,
                   HAS_INIT, PACKED)
        gp = dy + b.to(tl.int64) * sgb + rt.to(tl.int64)[:, None] * sgt + rd[None, :]
        g = tl.load(gp, mask=mt[:, None] & md[None, :], other=0.0).to(tl.float32)  # 0 past T
        if SILU:
            sg = sigmoid(pre)
            g = g * sg * (1.0 + pre * (1.0 - sg))
        ptr = dpre + b.to(tl.int64) * T * D + rt.to(tl.int64)[:, None] * D + rd[None, :]
        tl.store(ptr, g.to(dpre.dtype.element_ty), mask=mt[:, None] & md[None, :])
        for i in tl.static_range(W):
            xv = _tap(x, h0, b, t0, rt, pos_t, mt, rd, md, sxb, sxt, shb, sht, W - 1 - i, W, HAS_INIT, PACKED)
            dw_acc += tl.where(rw[:, None] == i, tl.sum(g * xv, axis=0)[None, :], 0.0)
        if HAS_BIAS:
            db_acc += tl.sum(g, axis=0)
        if DH0:  # noqa: SIM102  (a constexpr branch around a runtime one)
            if tile == 0:
                for j in tl.static_range(W - 1):
                    dj = tl.zeros([BD], dtype=tl.float32)
                    for t in tl.static_range(j + 1):
                        row = tl.sum(tl.where((rt == t)[:, None], g, 0.0), axis=0)
                        dj += row * tl.load(w + rd * W + (j - t), mask=md, other=0.0).to(tl.float32)
                    tl.store(dh0 + (b * (W - 1) + j).to(tl.int64) * D + rd, dj, mask=md)
    prog = (b * tl.num_programs(0) + pid_t).to(tl.int64)
    tl.store(dwp + prog * WP * D + rw[:, None] * D + rd[None, :], dw_acc, mask=(rw[:, None] < W) & md[None, :])
    if HAS_BIAS:
        tl.store(dbp + prog * D + rd, db_acc, mask=md)


@triton.jit
def _bwd_dx(dpre, w, pos, dr, dx, T, D, W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
            PACKED: tl.constexpr, HAS_RES: tl.constexpr):
    """Backward pass 2: dx_t = sum_l w[W-1-l] dpre_{t+l} over rows of t's own document, plus (HAS_RES)
    dr_t, the gradient of x's other consumer (the passed-through x), laid out like dx."""
    pid_t, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rt = pid_t * BT + tl.arange(0, BT)
    rd = pid_d * BD + tl.arange(0, BD)
    mt, md = rt < T, rd < D
    base = b.to(tl.int64) * T * D
    acc = tl.zeros([BT, BD], dtype=tl.float32)
    for l in tl.static_range(W):
        src = rt + l
        m = src < T
        if PACKED and l > 0:  # row s feeds row s - l only inside its own document
            m = m & (tl.load(pos + src, mask=m, other=0) >= l)
        wl = tl.load(w + rd * W + (W - 1 - l), mask=md, other=0.0).to(tl.float32)
        v = tl.load(dpre + base + src.to(tl.int64)[:, None] * D + rd[None, :], mask=m[:, None] & md[None, :],
                    other=0.0)
        acc += v.to(tl.float32) * wl[None, :]
    off = base + rt.to(tl.int64)[:, None] * D + rd[None, :]
    if HAS_RES:
        acc += tl.load(dr + off, mask=mt[:, None] & md[None, :], other=0.0).to(tl.float32)
    tl.store(dx + off, acc.to(dx.dtype.element_ty), mask=mt[:, None] & md[None, :])
