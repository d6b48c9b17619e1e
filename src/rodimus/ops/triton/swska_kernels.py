"""Triton kernels of sliding-window shared-key attention (SW-SKA), flash style.

Query row t (absolute position p = S - T + t) sees keys s with lo_t <= s <= p, lo_t = max(p - window,
document start), and key_mask[s]. Every loop runs only over key blocks that band can reach, so the
work is O(T x window). The softmax is online (running max and sum, float32, in base 2 so each
probability is one ``exp2``); the backward recomputes the probabilities from the saved log-sum-exp.

Most tile pairs lie wholly inside the band. Each loop runs in three parts: the tiles the band's edges
cut (masked), then the interior ones (no mask built), then the edge again. With a key mask every tile
is masked.

* ``_fwd``: one program per (query block, batch, head).
* ``_bwd_delta``: per row and head, sum_d o * dO in float32 (the softmax backward's row term).
* ``_bwd_dq``: the same walk, dq only.
* ``_bwd_dkdv``: one program per (key block, batch, head group): the shared key tile is loaded once and
  its gradient summed over the group's heads in registers (dv per head).
* ``_decode_split`` / ``_decode_combine``: one query token per sequence (decoding) against its cache, the
  visible keys cut into spans: softmax partials per (batch, head, span), then their merge.
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


LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _scores(q_t, k_t, s, p, lo, S, b, km, scale, HAS_KM: tl.constexpr, LOWP: tl.constexpr, MASKED: tl.constexpr):
    """Scores times ``scale`` (callers pass scale * log2 e), -inf outside the band when MASKED."""
    sc = mm(q_t, tl.trans(k_t), LOWP) * scale
    if not MASKED:
        return sc
    vis = (s[None, :] >= lo[:, None]) & (s[None, :] <= p[:, None]) & (s < S)[None, :]
    if HAS_KM:
        vis = vis & (tl.load(km + b * S + s, mask=s < S, other=0) != 0)[None, :]
    return tl.where(vis, sc, float("-inf"))


@triton.jit
def _interior_keys(tm, lo, S, T, pid_m, k_lo, k_hi, BM: tl.constexpr, BN: tl.constexpr, HAS_KM: tl.constexpr):
    """[a, z) within [k_lo, k_hi): the key tiles every row of this query block sees whole."""
    if HAS_KM:
        return k_hi, k_hi
    lo_max = tl.max(tl.where(tm, lo, 0), axis=0)
    a = tl.minimum(tl.maximum((lo_max + BN - 1) // BN * BN, k_lo), k_hi)
    # interior tiles end at or before the first row's position + 1 (and before S)
    end = tl.minimum(S - T + pid_m * BM + 1, S)
    z = tl.maximum(tl.minimum(end // BN * BN, k_hi), a)
    return a, z


@triton.jit
def _fwd_tile(acc, m_i, l_i, q_t, k, v, b, h, s0, p, lo, d, dv, S, km, qk_scale, H: tl.constexpr,
              D: tl.constexpr, DV: tl.constexpr, BN: tl.constexpr, HAS_KM: tl.constexpr, LOWP: tl.constexpr,
              MASKED: tl.constexpr):
    s = s0 + tl.arange(0, BN)
    k_t, v_t = _kv_tile(k, v, b, h, s, d, dv, S, H, D, DV)
    sc = _scores(q_t, k_t, s, p, lo, S, b, km, qk_scale, HAS_KM, LOWP, MASKED)
    m_new = tl.maximum(m_i, tl.max(sc, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    pr = tl.exp2(sc - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(pr, axis=1)
    acc = acc * alpha[:, None] + mm(pr, v_t, LOWP)
    return acc, m_new, l_i


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
    qk_scale = scale * LOG2E
    k_lo, k_hi = _key_range(tm, lo, S, T, tl.program_id(0), BM, BN)
    a, z = _interior_keys(tm, lo, S, T, tl.program_id(0), k_lo, k_hi, BM, BN, HAS_KM)
    for s0 in range(k_lo, a, BN):
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q_t, k, v, b, h, s0, p, lo, d, dv, S, km, qk_scale, H, D, DV, BN,
                                  HAS_KM, LOWP, True)
    for s0 in range(a, z, BN):
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q_t, k, v, b, h, s0, p, lo, d, dv, S, km, qk_scale, H, D, DV, BN,
                                  HAS_KM, LOWP, False)
    for s0 in range(z, k_hi, BN):
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q_t, k, v, b, h, s0, p, lo, d, dv, S, km, qk_scale, H, D, DV, BN,
                                  HAS_KM, LOWP, True)
    has = l_i > 0.0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    tl.store(
        o + ((b * T + t[:, None]) * H + h) * DV + dv[None, :],
        out.to(o.dtype.element_ty),
        mask=tm[:, None] & (dv < DV)[None, :],
    )
    lse_t = (m_i + tl.log2(tl.where(has, l_i, 1.0))) * LN2  # natural units
    tl.store(lse + (b * H + h) * T + t, tl.where(has, lse_t, 0.0), mask=tm)


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
    lse_t = tl.load(lse + (b * H + h) * T + t, mask=tm, other=0.0) * LOG2E
    dl_t = tl.load(delta + (b * H + h) * T + t, mask=tm, other=0.0)
    qk_scale = scale * LOG2E
    acc = tl.zeros([BM, BD], tl.float32)
    k_lo, k_hi = _key_range(tm, lo, S, T, tl.program_id(0), BM, BN)
    a, z = _interior_keys(tm, lo, S, T, tl.program_id(0), k_lo, k_hi, BM, BN, HAS_KM)
    for s0 in range(k_lo, a, BN):
        acc = _dq_tile(acc, q_t, do_t, lse_t, dl_t, k, v, b, h, s0, p, lo, d, dv, S, km, qk_scale, H, D, DV, BN,
                       HAS_KM, LOWP, True)
    for s0 in range(a, z, BN):
        acc = _dq_tile(acc, q_t, do_t, lse_t, dl_t, k, v, b, h, s0, p, lo, d, dv, S, km, qk_scale, H, D, DV, BN,
                       HAS_KM, LOWP, False)
    for s0 in range(z, k_hi, BN):
        acc = _dq_tile(acc, q_t, do_t, lse_t, dl_t, k, v, b, h, s0, p, lo, d, dv, S, km, qk_scale, H, D, DV, BN,
                       HAS_KM, LOWP, True)
    tl.store(dq + q_ptr, (acc * scale).to(dq.dtype.element_ty), mask=qmask)


@triton.jit
def _dq_tile(acc, q_t, do_t, lse_t, dl_t, k, v, b, h, s0, p, lo, d, dv, S, km, qk_scale, H: tl.constexpr,
             D: tl.constexpr, DV: tl.constexpr, BN: tl.constexpr, HAS_KM: tl.constexpr, LOWP: tl.constexpr,
             MASKED: tl.constexpr):
    s = s0 + tl.arange(0, BN)
    k_t, v_t = _kv_tile(k, v, b, h, s, d, dv, S, H, D, DV)
    pr = tl.exp2(_scores(q_t, k_t, s, p, lo, S, b, km, qk_scale, HAS_KM, LOWP, MASKED) - lse_t[:, None])
    ds = pr * (mm(do_t, tl.trans(v_t), LOWP) - dl_t[:, None])
    return acc + mm(ds, k_t, LOWP)


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
    dend,
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
    qk_scale = scale * LOG2E
    # queries that can see this key block: positions s0 .. s0 + BN - 1 + window
    off = S - T
    s_min = pid_n * BN
    s_max = tl.minimum(s_min + BN, S) - 1
    t_lo = tl.maximum(s_min - off, 0)
    t_hi = tl.minimum(s_max + window + 1 - off, T)
    if HAS_DOC:  # rows past the end of the last key's document see none of this block (S == T here)
        t_hi = tl.minimum(t_hi, tl.load(dend + s_max))
    start = t_lo // BM * BM
    # interior query blocks: every row sees every key of the block (rows in the block all < T, in the
    # first key's document, at or past the last key, within the window of the first key)
    a = tl.maximum((tl.maximum(s_max - off, 0) + BM - 1) // BM * BM, start)
    z_end = tl.minimum(s_min + window + 1 - off, T)
    if HAS_DOC:
        z_end = tl.minimum(z_end, tl.load(dend + s_min))
    z = tl.maximum(tl.maximum(z_end, 0) // BM * BM, a)
    if HAS_KM:
        a = start
        z = start
    if s_max - s_min + 1 < BN:  # the last key block, cut by S
        a = start
        z = start
    a = tl.minimum(a, tl.maximum(t_hi, start))
    z = tl.minimum(z, tl.maximum(t_hi, start))
    vmask = sm[:, None] & (dv < DV)[None, :]
    for hh in range(0, HPG):
        h = grp * HPG + hh
        if h < H:
            v_t = _head_rows(v, b, s, h, S, H, dv, DV)
            dv_acc = tl.zeros([BN, BDV], tl.float32)
            for t0 in range(start, a, BM):
                dv_acc, dk = _dkdv_tile(dv_acc, dk, k_t, v_t, q, do, lse, delta, dstart, km, b, h, s, t0, T, S,
                                        window, d, dv, qk_scale, H, D, DV, BM, HAS_KM, HAS_DOC, LOWP, True)
            for t0 in range(a, z, BM):
                dv_acc, dk = _dkdv_tile(dv_acc, dk, k_t, v_t, q, do, lse, delta, dstart, km, b, h, s, t0, T, S,
                                        window, d, dv, qk_scale, H, D, DV, BM, HAS_KM, HAS_DOC, LOWP, False)
            for t0 in range(z, t_hi, BM):
                dv_acc, dk = _dkdv_tile(dv_acc, dk, k_t, v_t, q, do, lse, delta, dstart, km, b, h, s, t0, T, S,
                                        window, d, dv, qk_scale, H, D, DV, BM, HAS_KM, HAS_DOC, LOWP, True)
            tl.store(
                dvo + ((b * S + s[:, None]) * H + h) * DV + dv[None, :],
                dv_acc.to(dvo.dtype.element_ty),
                mask=vmask,
            )
    tl.store(dkp + ((grp * tl.num_programs(1) + b) * S + s[:, None]) * D + d[None, :], dk * scale, mask=kmask)


@triton.jit
def _dkdv_tile(dv_acc, dk, k_t, v_t, q, do, lse, delta, dstart, km, b, h, s, t0, T, S, window, d, dv, qk_scale,
               H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, HAS_KM: tl.constexpr,
               HAS_DOC: tl.constexpr, LOWP: tl.constexpr, MASKED: tl.constexpr):
    t = t0 + tl.arange(0, BM)
    tm = t < T
    p, lo = _row_bounds(t, T, S, window, dstart, HAS_DOC)
    q_t = _head_rows(q, b, t, h, T, H, d, D)
    do_t = _head_rows(do, b, t, h, T, H, dv, DV)
    lse_t = tl.load(lse + (b * H + h) * T + t, mask=tm, other=0.0) * LOG2E
    dl_t = tl.load(delta + (b * H + h) * T + t, mask=tm, other=0.0)
    pr = tl.exp2(_scores(q_t, k_t, s, p, lo, S, b, km, qk_scale, HAS_KM, LOWP, MASKED) - lse_t[:, None])
    if MASKED:
        pr = tl.where(tm[:, None], pr, 0.0)
    dv_acc += mm(tl.trans(pr), do_t, LOWP)
    ds = pr * (mm(do_t, tl.trans(v_t), LOWP) - dl_t[:, None])
    dk += mm(tl.trans(ds), q_t, LOWP)
    return dv_acc, dk


@triton.jit
def _decode_split(q, k, v, km, opart, mpart, lpart, S, lo, span, scale, sqb, sqh, skb, sks, svb, svs, svh, NS,
                  H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr,
                  BDV: tl.constexpr, BN: tl.constexpr, HAS_KM: tl.constexpr, DOT: tl.constexpr,
                  LOWP: tl.constexpr):
    """One token's query (position S - 1) against keys [lo, S) of the cache, split into NS spans of
    ``span`` keys per (batch, head): the softmax partials (max, sum, unnormalised output) of one span.

    The step reads the cache once (the shared key tile from L2 for the other heads) and is bound by
    reading the values. The scores and the weighted value sum are float32 row reductions, or with DOT
    tensor-core products of the query / probability row padded to 16 rows (15 of them zero): wasted
    multiplies, but tiles that feed a dot are loaded through Triton's pipelined shared-memory copies.
    The row-sum form reads a cache in any dtype (float32 in registers), so one kept in another dtype than
    q is not copied whole first; DOT wants k and v in q's dtype."""
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    b = bh // H
    h = bh % H
    d = tl.arange(0, BD)
    dv = tl.arange(0, BDV)
    q_raw = tl.load(q + b * sqb + h * sqh + d, mask=d < D, other=0.0)
    q_r = q_raw.to(tl.float32) * (scale * LOG2E)
    start = lo + sp * span
    end = tl.minimum(start + span, S)
    if DOT:
        row0 = tl.arange(0, 16)[:, None] == 0
        q_16 = tl.where(row0, q_raw[None, :], 0.0).to(q_raw.dtype)  # unscaled: bf16 holds q exactly
    m_i = tl.full((), -1.0e30, tl.float32)  # finite: a span with every key masked keeps alpha = 1, p = 0
    l_i = tl.zeros((), tl.float32)
    acc = tl.zeros((BDV,), tl.float32)
    for s0 in range(start, end, BN):
        s = s0 + tl.arange(0, BN)
        sm = s < end
        k_t = tl.load(k + b * skb + s[:, None] * sks + d[None, :], mask=sm[:, None] & (d[None, :] < D), other=0.0)
        if DOT:
            x = tl.sum(mm(q_16, tl.trans(k_t), LOWP), 0) * (scale * LOG2E)
        else:
            x = tl.sum(k_t.to(tl.float32) * q_r[None, :], 1)
        if HAS_KM:
            sm = sm & (tl.load(km + b * S + s, mask=sm, other=0) != 0)
        x = tl.where(sm, x, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(x, 0))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(x - m_new)
        v_t = tl.load(v + b * svb + s[:, None] * svs + h * svh + dv[None, :],
                      mask=sm[:, None] & (dv[None, :] < DV), other=0.0)
        l_i = l_i * alpha + tl.sum(p, 0)
        if DOT:
            acc = acc * alpha + tl.sum(mm(tl.where(row0, p[None, :], 0.0), v_t, LOWP), 0)
        else:
            acc = acc * alpha + tl.sum(p[:, None] * v_t.to(tl.float32), 0)
        m_i = m_new
    part = bh * NS + sp
    tl.store(opart + part * BDV + dv, acc)
    tl.store(mpart + part, m_i)
    tl.store(lpart + part, l_i)


@triton.jit
def _decode_combine(opart, mpart, lpart, o, soh, NS, BNS: tl.constexpr, DV: tl.constexpr, BDV: tl.constexpr):
    """Merge one (batch, head)'s span partials into its output row; zeros where no key was visible."""
    bh = tl.program_id(0)
    i = tl.arange(0, BNS)
    dv = tl.arange(0, BDV)
    im = i < NS
    m = tl.load(mpart + bh * NS + i, mask=im, other=-1.0e30)
    m_all = tl.max(m, 0)
    w = tl.where(im, tl.exp2(m - m_all), 0.0)
    l_all = tl.sum(w * tl.load(lpart + bh * NS + i, mask=im, other=0.0), 0)
    parts = tl.load(opart + (bh * NS + i[:, None]) * BDV + dv[None, :], mask=im[:, None], other=0.0)
    out = tl.sum(w[:, None] * parts, 0) / tl.where(l_all > 0, l_all, 1.0)
    tl.store(o + bh * soh + dv, out.to(o.dtype.element_ty), mask=dv < DV)


__all__ = ["_bwd_dkdv", "_bwd_dq", "_decode_combine", "_decode_split", "_fwd", "triton"]
