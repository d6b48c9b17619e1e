"""Triton kernels of sliding-window shared-key attention (SW-SKA), flash style.

Query row t (absolute position p = S - T + t) sees keys s with lo_t <= s <= p, lo_t = max(p - window,
document start), and key_mask[s]. Every loop runs only over key blocks that band can reach, so the
work is O(T x window). The softmax is online (running max and sum, float32); the backward recomputes
the probabilities from the saved log-sum-exp.

* ``_fwd``: one program per (query block, batch, head).
* ``_bwd_delta``: per row and head, sum_d o * dO in float32 (the softmax backward's row term).
* ``_bwd_dq``: the same walk, dq only.
* ``_bwd_dkdv``: one program per (key block, batch, head group): the shared key tile is loaded once and
  its gradient summed over the group's heads in registers (dv per head).
"""

from __future__ import annotations

import triton
import triton.language as tl

from rodimus.ops.triton._common import mm


@triton.jit
def _row_bounds(t, T, S, window, dstart, HAS_DOC: tl.constexpr):
    p = S - T + t
    lo = tl.maximum(p - window, 0)
    if HAS_DOC:
        lo = tl.maximum(lo, tl.load(dstart + t, mask=t < T, other=0))
    return p, lo


@triton.jit
def _query_block(T, S, window, dstart, H: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr, BM: tl.constexpr,
                 HAS_DOC: tl.constexpr):
    """This program's (batch, head, BM query rows and their mask, key-range bounds, column ranges)."""
    pid_bh = tl.program_id(1)
    t = tl.program_id(0) * BM + tl.arange(0, BM)
    p, lo = _row_bounds(t, T, S, window, dstart, HAS_DOC)
    return pid_bh // H, pid_bh % H, t, t < T, p, lo, tl.arange(0, BD), tl.arange(0, BDV)


@triton.jit
def _head_rows(ptr, b, rows, h, n, H: tl.constexpr, cols, width: tl.constexpr):
    """ptr[b, rows, h, cols] of a [B, n, H, width] tensor, zero outside it."""
    return tl.load(
        ptr + ((b * n + rows[:, None]) * H + h) * width + cols[None, :],
        mask=(rows < n)[:, None] & (cols < width)[None, :],
        other=0.0,
    )


@triton.jit
def _key_range(tm, lo, S, T, pid_m, BM: tl.constexpr, BN: tl.constexpr):
    """[start, end) of the key blocks a query block's band reaches (start aligned to BN)."""
    k_lo = tl.min(tl.where(tm, lo, S), axis=0)
    return (k_lo // BN) * BN, tl.minimum(S - T + pid_m * BM + BM, S)


@triton.jit
def _kv_tile(k, v, b, h, s, d, dv, S, H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr):
    """The shared key rows s [BN, BD] and head h's value rows [BN, BDV] (zero past S)."""
    return _head_rows(k, b, s, 0, S, 1, d, D), _head_rows(v, b, s, h, S, H, dv, DV)


@triton.jit
def _scores(q_t, k_t, s, p, lo, S, b, km, scale, HAS_KM: tl.constexpr, LOWP: tl.constexpr):
    sc = mm(q_t, tl.trans(k_t), LOWP) * scale
    vis = (s[None, :] >= lo[:, None]) & (s[None, :] <= p[:, None]) & (s < S)[None, :]
    if HAS_KM:
        vis = vis & (tl.load(km + b * S + s, mask=s < S, other=0) != 0)[None, :]
    return tl.where(vis, sc, float("-inf"))


@triton.jit
def _fwd(
    q,
    k,
    v,
    o,
    lse,
    km,
    dstart,
    T,
    S,
    window,
    scale,
    H: tl.constexpr,
    D: tl.constexpr,
    DV: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    HAS_KM: tl.constexpr,
    HAS_DOC: tl.constexpr,
    LOWP: tl.constexpr,
):
    b, h, t, tm, p, lo, d, dv = _query_block(T, S, window, dstart, H, BD, BDV, BM, HAS_DOC)
    q_t = _head_rows(q, b, t, h, T, H, d, D)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BDV], tl.float32)
    k_lo, k_hi = _key_range(tm, lo, S, T, tl.program_id(0), BM, BN)
    for s0 in range(k_lo, k_hi, BN):
        s = s0 + tl.arange(0, BN)
        k_t, v_t = _kv_tile(k, v, b, h, s, d, dv, S, H, D, DV)
        sc = _scores(q_t, k_t, s, p, lo, S, b, km, scale, HAS_KM, LOWP)
        m_new = tl.maximum(m_i, tl.max(sc, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        pr = tl.exp(sc - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(pr, axis=1)
        acc = acc * alpha[:, None] + mm(pr, v_t, LOWP)
        m_i = m_new
    has = l_i > 0.0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    tl.store(
        o + ((b * T + t[:, None]) * H + h) * DV + dv[None, :],
        out.to(o.dtype.element_ty),
        mask=tm[:, None] & (dv < DV)[None, :],
    )
    tl.store(lse + (b * H + h) * T + t, tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), 0.0), mask=tm)


@triton.jit
def _bwd_delta(o, do, delta, T, H: tl.constexpr, DV: tl.constexpr, BH: tl.constexpr, BDV: tl.constexpr):
    # one program: one row (b, t), all heads; o and do are [B, T, H, DV], delta is [B, H, T]
    row = tl.program_id(0).to(tl.int64)
    hh = tl.arange(0, BH)
    dd = tl.arange(0, BDV)
    m = (hh < H)[:, None] & (dd < DV)[None, :]
    off = (row * H + hh[:, None]) * DV + dd[None, :]
    o_r = tl.load(o + off, mask=m, other=0.0).to(tl.float32)
    acc = tl.sum(o_r * tl.load(do + off, mask=m, other=0.0).to(tl.float32), axis=1)
    b = row // T
    tl.store(delta + (b * H + hh) * T + row % T, acc, mask=hh < H)


@triton.jit
def _bwd_dq(
    q,
    k,
    v,
    do,
    lse,
    delta,
    dq,
    km,
    dstart,
    T,
    S,
    window,
    scale,
    H: tl.constexpr,
    D: tl.constexpr,
    DV: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    HAS_KM: tl.constexpr,
    HAS_DOC: tl.constexpr,
    LOWP: tl.constexpr,
):
    b, h, t, tm, p, lo, d, dv = _query_block(T, S, window, dstart, H, BD, BDV, BM, HAS_DOC)
    qmask = tm[:, None] & (d < D)[None, :]
    q_ptr = ((b * T + t[:, None]) * H + h) * D + d[None, :]
    q_t = _head_rows(q, b, t, h, T, H, d, D)
    do_t = _head_rows(do, b, t, h, T, H, dv, DV)
    lse_t = tl.load(lse + (b * H + h) * T + t, mask=tm, other=0.0)
    dl_t = tl.load(delta + (b * H + h) * T + t, mask=tm, other=0.0)
    acc = tl.zeros([BM, BD], tl.float32)
    k_lo, k_hi = _key_range(tm, lo, S, T, tl.program_id(0), BM, BN)
    for s0 in range(k_lo, k_hi, BN):
        s = s0 + tl.arange(0, BN)
        k_t, v_t = _kv_tile(k, v, b, h, s, d, dv, S, H, D, DV)
        pr = tl.exp(_scores(q_t, k_t, s, p, lo, S, b, km, scale, HAS_KM, LOWP) - lse_t[:, None])
        ds = pr * (mm(do_t, tl.trans(v_t), LOWP) - dl_t[:, None])
        acc += mm(ds, k_t, LOWP)
    tl.store(dq + q_ptr, (acc * scale).to(dq.dtype.element_ty), mask=qmask)


@triton.jit
def _bwd_dkdv(
    q,
    k,
    v,
    do,
    lse,
    delta,
    dkp,
    dvo,
    km,
    dstart,
    T,
    S,
    window,
    scale,
    HPG,
    H: tl.constexpr,
    D: tl.constexpr,
    DV: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    HAS_KM: tl.constexpr,
    HAS_DOC: tl.constexpr,
    LOWP: tl.constexpr,
):
    pid_n = tl.program_id(0)
    b = tl.program_id(1)
    grp = tl.program_id(2)
    s = pid_n * BN + tl.arange(0, BN)
    sm = s < S
    d = tl.arange(0, BD)
    dv = tl.arange(0, BDV)
    kmask = sm[:, None] & (d < D)[None, :]
    k_t = _head_rows(k, b, s, 0, S, 1, d, D)
    dk = tl.zeros([BN, BD], tl.float32)
    # queries that can see this key block: positions s0 .. s0 + BN - 1 + window
    t_lo = tl.maximum(pid_n * BN - (S - T), 0)
    t_hi = tl.minimum(pid_n * BN + BN + window - (S - T), T)
    vmask = sm[:, None] & (dv < DV)[None, :]
    for hh in range(0, HPG):
        h = grp * HPG + hh
        if h < H:
            v_t = _head_rows(v, b, s, h, S, H, dv, DV)
            dv_acc = tl.zeros([BN, BDV], tl.float32)
            for t0 in range((t_lo // BM) * BM, t_hi, BM):
                t = t0 + tl.arange(0, BM)
                tm = t < T
                p, lo = _row_bounds(t, T, S, window, dstart, HAS_DOC)
                q_t = _head_rows(q, b, t, h, T, H, d, D)
                do_t = _head_rows(do, b, t, h, T, H, dv, DV)
                lse_t = tl.load(lse + (b * H + h) * T + t, mask=tm, other=0.0)
                dl_t = tl.load(delta + (b * H + h) * T + t, mask=tm, other=0.0)
                sc = _scores(q_t, k_t, s, p, lo, S, b, km, scale, HAS_KM, LOWP)
                pr = tl.where(tm[:, None], tl.exp(sc - lse_t[:, None]), 0.0)
                dv_acc += mm(tl.trans(pr), do_t, LOWP)
                ds = pr * (mm(do_t, tl.trans(v_t), LOWP) - dl_t[:, None])
                dk += mm(tl.trans(ds), q_t, LOWP)
            tl.store(
                dvo + ((b * S + s[:, None]) * H + h) * DV + dv[None, :],
                dv_acc.to(dvo.dtype.element_ty),
                mask=vmask,
            )
    tl.store(dkp + ((grp * tl.num_programs(1) + b) * S + s[:, None]) * D + d[None, :], dk * scale, mask=kmask)


__all__ = ["_bwd_dkdv", "_bwd_dq", "_fwd", "triton"]
