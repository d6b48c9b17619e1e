"""Triton kernels of the chunked DDTS recurrence (forward, backward, one-step decode).

Layout: every tensor is flattened to rows ``[TT = B*T, H, D]``; a *sequence* is a row range
``[cu[n], cu[n+1])`` (a batch row, or a packed document), and chunks of C rows never cross one.

* ``_prep``: from raw q, k, g_pre, tau_pre (float32 in registers): the gates, the running log-decay b
  (cumsum of log alpha inside the chunk), and three K-sized products the V-sized passes need:
  ``qe = scale q e^b``, ``ke = beta k_hat e^(b_last - b)``, ``dec = e^b_last`` and the causal
  intra-chunk scores ``A[t, s] = sum_k scale q_t k_s e^(b_t - b_s)``. One program per chunk, walking K
  a slice at a time; each 16-row sub-chunk's rows of A are one dot, both factors taken relative to the
  middle of that sub-chunk's log-decay range (exponents bounded by half the decay across 16 rows). A
  chunk whose decay across a sub-chunk passes ``LIM`` takes an exponent-free form instead (earlier
  sub-chunks factor through the sub-chunk boundary, the diagonal block is a [16, 16, slice] tile of
  e^(b_t - b_s) with s <= t only), so nothing overflows however strong the decay.
* ``_fwd``: one program per (V block, sequence, head) walks the chunks carrying its [K, BV] state in
  registers: ``o = qe S + A v``, ``S = dec S + ke^T v``. The state never touches HBM. A forward without
  gradients (``FAST``) reads qe, ke and A in bf16 and multiplies in bf16.
* Split forms (``LAUNCH[...]["split"]``): ``_walk`` is the only sequential part, one light program per
  (K block, V block, sequence, head) storing the state at every chunk start (float32; bf16 for a
  forward without gradients); ``_fwd_chunk`` then forms the outputs chunk-parallel. In the backward a
  second ``_walk`` runs in reverse carrying dS (stored at chunk ends), and ``_bwd_chunk`` (one program
  per chunk and V slice) computes dv and a few V-slice partial sums of dO S^T, v dS^T and dO v^T.
* Segmented walks (``LAUNCH["walk"]["segment"]``, long sequences): a walk's latency grows with the longest
  document, so documents are cut into segments of a few chunks. ``_walk`` MODE 1 finds each segment's
  end state from zeros (all segments at once), ``_walk_carry`` steps once per segment to the states
  entering them, and MODE 2 walks all segments again from those, storing every state. Where all segments
  are as long (plain batches), ``_segment_keys`` instead forms the left operand of one GEMM per segment
  that gives its end (``LAUNCH["walk"]["starts_gemm"]``).
* ``_bwd_state`` (fused backward): the same walk forward (states at chunk starts to a scratch buffer),
  then backward carrying dS: dv, and per V block partial sums of dO S^T, v dS^T and dO v^T.
* ``_bwd_intra``: per chunk and slice of K columns (every column's gradients are independent but for
  the key norm), the V-reduced partials become dq, the gradient of beta k_hat, the per-token
  d(log-decay) contributions and the beta-path gate gradients, with the same sub-chunk blocks as
  ``_prep`` (diagonal tiles 1.9x faster than a column loop).
* ``_chunk_totals`` then ``_bwd_gates``: per chunk, dk through the key norm (a sum over all K columns),
  d(log-decay) as the suffix sum of the per-token
  contributions over the rest of the sequence (chunk totals carry it across chunks), and the last link:
  softplus and sigmoid derivatives.
* ``_decode``: one token, [K, BV] state block per program.
"""

from __future__ import annotations

import triton
import triton.language as tl

from rodimus.ops.triton._common import mm, mm_tf32, sigmoid, softplus

SUB = tl.constexpr(16)  # sub-chunk rows (the smallest tile tl.dot takes)


@triton.jit
def _gates(gp, tp, kr, eps, valid, rn=None):
    """Float32 [R, BK] tiles -> (log alpha, beta k_hat, k_hat, beta, g, tau, rsqrt-norm [R]).

    rn: the rows' key rsqrt-norms when ``kr`` holds only some of the K columns (else computed from kr)."""
    g = softplus(gp)
    tau = sigmoid(tp)
    loga = tl.where(valid, -g * tau, 0.0)
    beta = tl.where(g > 0.0, tl.exp(tau * tl.log(g)), 0.0)
    if rn is None:
        rn = 1.0 / tl.sqrt(tl.sum(kr * kr, axis=1) + eps)
    kh = kr * rn[:, None]
    kb = tl.where(valid, kh * beta, 0.0)
    return loga, kb, kh, beta, g, tau, rn


@triton.jit
def _key_rnorm(k, rows, rmask, s_qk, eps, K: tl.constexpr, BKS: tl.constexpr):
    """1 / sqrt(|k_t|^2 + eps) per row, reading the K columns BKS at a time (for column-sliced programs)."""
    acc = tl.zeros([rows.shape[0]], tl.float32)
    for k0 in tl.static_range(0, K, BKS):
        cols = k0 + tl.arange(0, BKS)
        kr = _load_rows(k, rows, cols, rmask, cols < K, s_qk)
        acc += tl.sum(kr * kr, axis=1)
    return 1.0 / tl.sqrt(acc + eps)


@triton.jit
def _load_rows(ptr, rows, cols, rmask, cmask, stride):
    return tl.load(
        ptr + rows[:, None] * stride + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0
    ).to(tl.float32)


@triton.jit
def _load_gates(q, k, gp, tp, rows, cols, rmask, cmask, s_qk, s_g, scale, eps, rn=None):
    """Rows of raw q, k, g_pre, tau_pre -> :func:`_gates` of them, then scale * q (all float32).

    s_qk and s_g are the row strides of q/k and of g_pre/tau_pre: column slices of the mixer's projections,
    read in place."""
    loga, kb, kh, beta, g, tau, rn = _gates(
        _load_rows(gp, rows, cols, rmask, cmask, s_g),
        _load_rows(tp, rows, cols, rmask, cmask, s_g),
        _load_rows(k, rows, cols, rmask, cmask, s_qk),
        eps,
        rmask[:, None] & cmask[None, :],
        rn,
    )
    return loga, kb, kh, beta, g, tau, rn, _load_rows(q, rows, cols, rmask, cmask, s_qk) * scale


@triton.jit
def _chunk_decay(q, k, gp, tp, t0, eos, s_qk, s_g, scale, eps, K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
                 k0=0, rn=None):
    """One chunk's rows from ``t0`` -> (row/column indices and masks, log alpha, beta k_hat, scale q, the
    running log-decay b = cumsum of log alpha and its chunk total b_last).

    Columns k0 .. k0 + BK; a program that holds only some columns passes the rows' key norms ``rn``."""
    rl = tl.arange(0, C)
    rows = t0 + rl
    rmask = rows < eos
    cols = k0 + tl.arange(0, BK)
    cmask = cols < K
    loga, kb, _, _, _, _, _, qs = _load_gates(q, k, gp, tp, rows, cols, rmask, cmask, s_qk, s_g, scale, eps, rn)
    return rl, rows, rmask, cols, cmask, loga, kb, qs, tl.cumsum(loga, axis=0), tl.sum(loga, axis=0)


@triton.jit
def _chunk_of(pid, chunk_seq, chunk_idx, cu, C: tl.constexpr):
    seq = tl.load(chunk_seq + pid)
    c = tl.load(chunk_idx + pid)
    seq_c = tl.maximum(seq, 0)
    bos = tl.load(cu + seq_c)
    eos = tl.load(cu + seq_c + 1)
    return seq, c, bos + c * C, eos


@triton.jit
def _stored_chunk(pid, chunk_seq, chunk_idx, cu, coff, C: tl.constexpr):
    """(sequence or -1, global chunk index into the per-chunk state buffers, rows, row mask)."""
    seq, c, t0, eos = _chunk_of(pid, chunk_seq, chunk_idx, cu, C)
    rows = t0 + tl.arange(0, C)
    return seq, tl.load(coff + tl.maximum(seq, 0)) + c, rows, rows < eos


@triton.jit
def _pair_decay(b_i, sl):
    """[SUB, SUB, BK] tile e^(b_t - b_s) for s <= t, else 0 (the exponent is never positive there)."""
    causal = (sl[:, None] >= sl[None, :])[:, :, None]
    return tl.exp(tl.where(causal, b_i[:, None, :] - b_i[None, :, :], float("-inf")))


@triton.jit
def _sub_chunk_gates(q, k, gp, tp, t0, eos, i, rn, cols, cmask, loga, s_qk, s_g, scale, eps, C: tl.constexpr):
    """Sub-chunk i's rows of a chunk from ``t0`` (``loga``: the whole chunk's log alpha for ``cols``) ->
    (rows, row mask, their :func:`_load_gates` results, the log-decay before the sub-chunk, their running
    log-decay b)."""
    rl = tl.arange(0, C)
    sl = tl.arange(0, SUB)
    rows_i = t0 + i * SUB + sl
    rm_i = rows_i < eos
    rn_i = tl.sum(tl.where(rl[None, :] == i * SUB + sl[:, None], rn[None, :], 0.0), axis=1)
    loga_i, kb_i, kh_i, beta_i, g_i, tau_i, _, qs_i = _load_gates(
        q, k, gp, tp, rows_i, cols, rm_i, cmask, s_qk, s_g, scale, eps, rn_i
    )
    prefix = tl.sum(tl.where(rl[:, None] < i * SUB, loga, 0.0), axis=0)
    b_i = prefix[None, :] + tl.cumsum(loga_i, axis=0)
    return rows_i, rm_i, loga_i, kb_i, kh_i, beta_i, g_i, tau_i, qs_i, prefix, b_i


LIM = tl.constexpr(80.0)  # the largest log-decay across one sub-chunk that _prep's one-dot form takes


@triton.jit
def _sub_chunk_scores(q, k, gp, tp, t0, eos, i, rn, s_qk, s_g, scale, eps,
                      K: tl.constexpr, C: tl.constexpr, BKS: tl.constexpr):
    """Rows i*SUB.. of A with no positive exponent anywhere, however strong the decay: earlier sub-chunks
    factor through the decay at sub-chunk i's start, the diagonal block is a [SUB, SUB, BKS] tile of
    e^(b_t - b_s) for s <= t. Returns (the [SUB, C] rows left of the diagonal block, that block)."""
    rl = tl.arange(0, C)
    sl = tl.arange(0, SUB)
    earlier = rl[:, None] < i * SUB
    a_off = tl.zeros([SUB, C], tl.float32)
    a_d = tl.zeros([SUB, SUB], tl.float32)
    for k0 in range(0, K, BKS):
        _, _, _, cols, cmask, loga, kb, _, b, _ = _chunk_decay(q, k, gp, tp, t0, eos, s_qk, s_g, scale, eps, K, C,
                                                               BKS, k0, rn)  # fmt: skip
        _, _, _, kb_i, _, _, _, _, qs_i, prefix, b_i = _sub_chunk_gates(q, k, gp, tp, t0, eos, i, rn, cols, cmask,
                                                                        loga, s_qk, s_g, scale, eps, C)  # fmt: skip
        qg = qs_i * tl.exp(b_i - prefix[None, :])
        kg = kb * tl.exp(tl.where(earlier, prefix[None, :] - b, float("-inf")))
        a_off += mm(qg, tl.trans(kg), False)
        a_d += tl.sum(qs_i[:, None, :] * kb_i[None, :, :] * _pair_decay(b_i, sl), axis=2)
    return tl.where(rl[None, :] < i * SUB, a_off, 0.0), a_d


@triton.jit
def _prep(
    q,
    k,
    gp,
    tp,
    qe,
    ke,
    dec,
    A,
    chunk_seq,
    chunk_idx,
    cu,
    coff,
    s_qk,
    s_g,
    scale,
    eps,
    H: tl.constexpr,
    K: tl.constexpr,
    C: tl.constexpr,
    BKS: tl.constexpr,
    LOWP: tl.constexpr,
):
    """One program per chunk: qe, ke, dec and A, walking the K columns BKS at a time.

    A[t, s] = sum_k scale q_t k_s e^(b_t - b_s) as one dot per sub-chunk i of rows: both factors are taken
    relative to the middle m_i of that sub-chunk's log-decay range, q_t e^(b_t - m_i) and k_s e^(m_i - b_s)
    for s up to the sub-chunk's end, so neither exponent exceeds half the decay across one sub-chunk
    (those of earlier sub-chunks are <= 0). A chunk where that decay passes LIM in some column takes
    :func:`_sub_chunk_scores` instead (no positive exponent at all), so nothing overflows however strong
    the decay. (That form as the only one, a program per sub-chunk, took 117-123 us against 30 at B8 T2048
    K64 on an H100: its [SUB, SUB, K] tiles and layout changes made it issue-bound at 255 registers.)"""
    NSUB: tl.constexpr = C // SUB
    HALF: tl.constexpr = LIM * 0.5
    pid = tl.program_id(0)
    h = tl.program_id(1)
    seq, c, t0, eos = _chunk_of(pid, chunk_seq, chunk_idx, cu, C)
    if seq >= 0:
        off = h * K
        rl = tl.arange(0, C)
        sub = rl // SUB
        rn = _key_rnorm(k + off, t0 + rl, t0 + rl < eos, s_qk, eps, K, BKS)
        acc = tl.zeros([C, C], tl.float32)
        strong = tl.full((), 0.0, tl.float32)
        for k0 in range(0, K, BKS):
            _, rows, rmask, cols, cmask, loga, kb, qs, b, b_last = _chunk_decay(
                q + off, k + off, gp + off, tp + off, t0, eos, s_qk, s_g, scale, eps, K, C, BKS, k0, rn
            )
            valid = rmask[:, None] & cmask[None, :]
            ptr = rows[:, None] * (H * K) + off + cols[None, :]
            tl.store(qe + ptr, (qs * tl.exp(b)).to(qe.dtype.element_ty), mask=valid)
            tl.store(ke + ptr, (kb * tl.exp(b_last[None, :] - b)).to(ke.dtype.element_ty), mask=valid)
            tl.store(dec + ((tl.load(coff + seq) + c) * H + h) * K + cols, tl.exp(b_last), mask=cmask)
            ref = tl.zeros_like(b)
            for i in tl.static_range(NSUB):  # m_i per column, and each row's m
                lo = tl.sum(tl.where(rl[:, None] < i * SUB, loga, 0.0), axis=0)
                hi = tl.sum(tl.where(rl[:, None] < (i + 1) * SUB, loga, 0.0), axis=0)
                strong = tl.maximum(strong, tl.max(lo - hi, axis=0))
                ref = tl.where((sub == i)[:, None], (0.5 * (lo + hi))[None, :], ref)
            qg = qs * tl.exp(tl.minimum(b - ref, HALF))
            for i in tl.static_range(NSUB):
                m_i = tl.sum(tl.where((rl == i * SUB)[:, None], ref, 0.0), axis=0)
                kg = tl.where((rl < (i + 1) * SUB)[:, None], kb * tl.exp(tl.minimum(m_i[None, :] - b, HALF)), 0.0)
                acc += mm_tf32(tl.where((sub == i)[:, None], qg, 0.0), tl.trans(kg), LOWP)
        a_ptr = A + (t0 + rl)[:, None] * (H * C) + h * C + rl[None, :]
        amask = (t0 + rl < eos)[:, None]
        if strong <= LIM:
            tl.store(a_ptr, tl.where(rl[:, None] >= rl[None, :], acc, 0.0).to(A.dtype.element_ty), mask=amask)
        else:
            sl = tl.arange(0, SUB)
            for i in tl.static_range(NSUB):
                a_off, a_d = _sub_chunk_scores(q + off, k + off, gp + off, tp + off, t0, eos, i, rn, s_qk, s_g,
                                               scale, eps, K, C, BKS)  # fmt: skip
                row_ptr = A + (t0 + i * SUB + sl)[:, None] * (H * C) + h * C
                rm_i = (t0 + i * SUB + sl < eos)[:, None]
                outside = (rl < i * SUB) | (rl >= (i + 1) * SUB)
                tl.store(row_ptr + rl[None, :], a_off.to(A.dtype.element_ty), mask=rm_i & outside[None, :])
                tl.store(row_ptr + i * SUB + sl[None, :], a_d.to(A.dtype.element_ty), mask=rm_i)


@triton.jit
def _walk_start(x0, cu, coff, ik, iv, pid, H: tl.constexpr, K: tl.constexpr, V, C: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, HAS_INIT: tl.constexpr):
    """A walk program's sequence, [BK, BV] state block and starting state (x0's block, or zeros)."""
    seq = pid // H
    h = pid % H
    bos = tl.load(cu + seq)
    eos = tl.load(cu + seq + 1)
    c0 = tl.load(coff + seq)
    kk = ik * BK + tl.arange(0, BK)
    vv = iv * BV + tl.arange(0, BV)
    km = kk < K
    vm = vv < V
    smask = km[:, None] & vm[None, :]
    s_ptr = ((seq * H + h) * K + kk[:, None]) * V + vv[None, :]
    if HAS_INIT:
        X = tl.load(x0 + s_ptr, mask=smask, other=0.0).to(tl.float32)
    else:
        X = tl.zeros([BK, BV], tl.float32)
    return h, bos, eos, c0, tl.cdiv(eos - bos, C), kk, vv, km, vm, smask, s_ptr, X


@triton.jit
def _walk_step(a, b, dec, xbuf, X, c, bos, eos, c0, h, kk, km, vv, vm, smask, V,
               H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, LOWP: tl.constexpr, STORE: tl.constexpr = True):
    """Store X as chunk c's state in ``xbuf`` (if STORE), then return dec_c * X + a_c^T b_c (one walk step)."""
    rows = bos + c * C + tl.arange(0, C)
    rm = rows < eos
    if STORE:
        tl.store(xbuf + (((c0 + c) * H + h) * K + kk[:, None]) * V + vv[None, :], X.to(xbuf.dtype.element_ty),
                 mask=smask)
    a_c = _load_rows(a + h * K, rows, kk, rm, km, H * K)
    b_c = tl.load(b + rows[:, None] * (H * V) + h * V + vv[None, :], mask=rm[:, None] & vm[None, :], other=0.0)
    d_c = tl.load(dec + ((c0 + c) * H + h) * K + kk, mask=km, other=0.0)
    return d_c[:, None] * X + mm_tf32(tl.trans(a_c), b_c, LOWP)


@triton.jit
def _chunk_out(v, o, qe, A, S, h, rows, rm, kk, km, vv, vm, V,
               H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, LOWP: tl.constexpr, FAST: tl.constexpr = False):
    """o = qe S + A v for one chunk's rows and V block (S: the chunk-start state block); returns the v tile,
    which the fused walk's state update reads too. FAST: bf16 products (qe, A stored so) and bf16 dots."""
    rl = tl.arange(0, C)
    vmask = rm[:, None] & vm[None, :]
    v_ptr = rows[:, None] * (H * V) + h * V + vv[None, :]
    v_c = tl.load(v + v_ptr, mask=vmask, other=0.0)
    if FAST:
        qe_c = tl.load(qe + h * K + rows[:, None] * (H * K) + kk[None, :], mask=rm[:, None] & km[None, :], other=0.0)
        a_c = tl.load(A + h * C + rows[:, None] * (H * C) + rl[None, :], mask=rm[:, None], other=0.0)
        out = mm(a_c, v_c, True) + mm(qe_c, S, True)
    else:
        qe_c = _load_rows(qe + h * K, rows, kk, rm, km, H * K)
        a_c = _load_rows(A + h * C, rows, rl, rm, rl < C, H * C)
        out = mm_tf32(qe_c, S, LOWP) + mm_tf32(a_c, v_c, LOWP)
    tl.store(o + v_ptr, out.to(o.dtype.element_ty), mask=vmask)
    return v_c


@triton.jit
def _fwd(
    v,
    o,
    qe,
    ke,
    dec,
    A,
    h0,
    hT,
    cu,
    coff,
    V,
    H: tl.constexpr,
    K: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_INIT: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    LOWP: tl.constexpr,
    FAST: tl.constexpr = False,
):
    h, bos, eos, c0, nch, kk, vv, km, vm, smask, s_ptr, S = _walk_start(
        h0, cu, coff, 0, tl.program_id(0), tl.program_id(1), H, K, V, C, BK, BV, HAS_INIT
    )
    rl = tl.arange(0, C)
    for c in range(0, nch):
        rows = bos + c * C + rl
        rm = rows < eos
        d_c = tl.load(dec + ((c0 + c) * H + h) * K + kk, mask=km, other=0.0)
        v_c = _chunk_out(v, o, qe, A, S, h, rows, rm, kk, km, vv, vm, V, H, K, C, LOWP, FAST)
        if FAST:  # ke read transposed, [K, C], straight into the dot
            ke_t = tl.load(ke + h * K + rows[None, :] * (H * K) + kk[:, None], mask=rm[None, :] & km[:, None],
                           other=0.0)
            S = d_c[:, None] * S + mm(ke_t, v_c, True)
        else:
            ke_c = _load_rows(ke + h * K, rows, kk, rm, km, H * K)
            S = d_c[:, None] * S + mm_tf32(tl.trans(ke_c), v_c, LOWP)
    if STORE_FINAL:
        tl.store(hT + s_ptr, S, mask=smask)


@triton.jit
def _fwd_chunk(
    v,
    o,
    qe,
    A,
    hbuf,
    chunk_seq,
    chunk_idx,
    cu,
    coff,
    V,
    H: tl.constexpr,
    K: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    LOWP: tl.constexpr,
    FAST: tl.constexpr = False,
):
    """o = qe S_c + A v for one chunk and V block, from the chunk-start state :func:`_walk` stored."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    iv = tl.program_id(2)
    seq, ch, rows, rm = _stored_chunk(pid, chunk_seq, chunk_idx, cu, coff, C)
    if seq >= 0:
        kk = tl.arange(0, BK)
        km = kk < K
        vv = iv * BV + tl.arange(0, BV)
        vm = vv < V
        S = tl.load(hbuf + ((ch * H + h) * K + kk[:, None]) * V + vv[None, :], mask=km[:, None] & vm[None, :],
                    other=0.0)
        _chunk_out(v, o, qe, A, S, h, rows, rm, kk, km, vv, vm, V, H, K, C, LOWP, FAST)


@triton.jit
def _walk(
    a,
    b,
    dec,
    x0,
    xbuf,
    xT,
    dhT,
    finp,
    fin,
    cu,
    coff,
    V,
    H: tl.constexpr,
    K: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_INIT: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    FINP: tl.constexpr,
    LOWP: tl.constexpr,
    MODE: tl.constexpr = 0,
):
    """X <- dec_c * X + a_c^T b_c over one sequence's chunks, for a [BK, BV] block of X, storing X before
    every update in ``xbuf`` (the split forms' only sequential part).

    Forward (a = ke, b = v): the states at chunk starts. REVERSE (a = qe, b = dO): dS at chunk ends. Rows
    of X are independent, so the grid splits K as well as V: many light programs hide the walk's latency.
    FINP (forward only): this block's part of the final-state term of d(log alpha), sum_v dS_T * S_T.

    MODE 1 and 2 walk *segments* (cu/coff describe segments of documents, ``fin[seg]`` the document a
    segment ends in walk order, else -1): 1 walks each segment from zeros and stores only its end state
    in xT[seg], skipping the segments that end a document (nothing reads theirs); 2 starts each from
    x0[seg] (the state :func:`_walk_carry` found entering it), stores every state, and the end state of
    a document's last segment in xT[fin[seg]].
    """
    iv = tl.program_id(1)
    pid = tl.program_id(2)
    h, bos, eos, c0, nch, kk, vv, km, vm, smask, s_ptr, X = _walk_start(
        x0, cu, coff, tl.program_id(0), iv, pid, H, K, V, C, BK, BV, HAS_INIT
    )
    if MODE != 0:
        f = tl.load(fin + pid // H)
        if MODE == 1:
            nch = tl.where(f >= 0, 0, nch)
    for i in range(0, nch):
        X = _walk_step(a, b, dec, xbuf, X, nch - 1 - i if REVERSE else i, bos, eos, c0, h, kk, km, vv, vm, smask,
                       V, H, K, C, LOWP, MODE != 1)
    if STORE_FINAL:
        if MODE == 0:
            tl.store(xT + s_ptr, X, mask=smask)
        elif MODE == 1:
            if f < 0:
                tl.store(xT + s_ptr, X, mask=smask)
        else:
            if f >= 0:
                tl.store(xT + ((f * H + h) * K + kk[:, None]) * V + vv[None, :], X, mask=smask)
    if FINP:
        dS = tl.load(dhT + s_ptr, mask=smask, other=0.0).to(tl.float32)
        tl.store(finp + (iv * tl.num_programs(2) + pid) * K + kk, tl.sum(dS * X, axis=1), mask=km)


@triton.jit
def _product(a, b):
    return a * b


@triton.jit
def _walk_carry(dec, x0, ends, cu, coff, scu, scoff, first, V, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, REVERSE: tl.constexpr, HAS_INIT: tl.constexpr,
                SEG: tl.constexpr):
    """The segmented walk's sequential part: one step per segment instead of one per chunk.

    Per document (cu/coff; its segments ``first[doc] .. first[doc + 1] - 1`` in scu/scoff, in walk order),
    ``ends[seg]`` holds the segment's end state from zeros (MODE 1 of :func:`_walk`) and is overwritten by
    the state entering the segment; X <- P_seg X + ends[seg] in between, P_seg the product of the
    segment's chunk decays, loaded as one [SEG, BK] tile (SEG >= chunks per segment) rather than a chunk
    at a time: the carry is a chain of dependent steps, so its latency is what counts. Nothing reads the
    end of the segment walked last, so neither it nor its decays are loaded.
    """
    pid = tl.program_id(2)
    h, _, _, _, _, kk, vv, km, _, smask, _, X = _walk_start(
        x0, cu, coff, tl.program_id(0), tl.program_id(1), pid, H, K, V, C, BK, BV, HAS_INIT
    )
    s0 = tl.load(first + pid // H)
    n = tl.load(first + pid // H + 1) - s0
    cs = tl.arange(0, SEG)
    for j in range(0, n):
        s = s0 + n - 1 - j if REVERSE else s0 + j
        ptr = ends + ((s * H + h) * K + kk[:, None]) * V + vv[None, :]
        if j < n - 1:
            end = tl.load(ptr, mask=smask, other=0.0)
            tl.store(ptr, X, mask=smask)
            nc = tl.cdiv(tl.load(scu + s + 1) - tl.load(scu + s), C)
            dptr = dec + ((tl.load(scoff + s) + cs[:, None]) * H + h) * K + kk[None, :]
            d = tl.load(dptr, mask=(cs[:, None] < nc) & km[None, :], other=1.0)
            X = tl.reduce(d, 0, _product)[:, None] * X + end
        else:
            tl.store(ptr, X, mask=smask)


@triton.jit
def _segment_keys(a, dec, out, rows, sa, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
                  SEG: tl.constexpr, REVERSE: tl.constexpr):
    """The left operand of the segments' end GEMM (``_segment_ends_gemm``), one program per (segment, head)
    of a plain batch (segments of ``rows`` rows back to back, SEG >= their chunks): out[seg * H + h] =
    (w_c a_c)^T as [K, rows], w_c the product of dec over the segment's chunks walked after chunk c (a
    cumulative product over one [SEG, K] tile of dec shifted by a chunk), so that
    out @ b is the segment's end state from zeros."""
    pid = tl.program_id(0)
    s = pid // H
    h = pid % H
    m = rows // C
    cs = tl.arange(0, SEG)
    kk = tl.arange(0, BK)
    km = kk < K
    src = cs - 1 if REVERSE else cs + 1  # w_c takes chunks before c (REVERSE) or after it
    d = tl.load(dec + ((s * m + src[:, None]) * H + h) * K + kk[None, :],
                mask=((src >= 0) & (src < m))[:, None] & km[None, :], other=1.0)
    w = tl.cumprod(d, 0, reverse=not REVERSE)
    rl = tl.arange(0, C)
    for j in range(0, m):
        wj = tl.sum(tl.where(cs[:, None] == j, w, 0.0), 0)
        r = s * rows + j * C + rl
        x = tl.load(a + r[:, None] * sa + h * K + kk[None, :], mask=km[None, :], other=0.0).to(tl.float32)
        tl.store(out + (pid * K + kk[:, None]) * rows + j * C + rl[None, :],
                 tl.trans(x * wj[None, :]).to(out.dtype.element_ty), mask=km[:, None])


@triton.jit
def _bwd_state(
    v,
    do,
    qe,
    ke,
    dec,
    A,
    h0,
    dhT,
    hbuf,
    dv,
    dh0,
    dQp,
    dKp,
    dAp,
    finp,
    cu,
    coff,
    V,
    TT,
    H: tl.constexpr,
    K: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_INIT: tl.constexpr,
    HAS_DHT: tl.constexpr,
    LOWP: tl.constexpr,
):
    iv = tl.program_id(0)
    pid = tl.program_id(1)
    h, bos, eos, c0, nch, kk, vv, km, vm, smask, s_ptr, S = _walk_start(
        h0, cu, coff, 0, iv, pid, H, K, V, C, BK, BV, HAS_INIT
    )
    rl = tl.arange(0, C)
    # forward walk: the state at every chunk start, kept for the backward walk
    for c in range(0, nch):
        S = _walk_step(ke, v, dec, hbuf, S, c, bos, eos, c0, h, kk, km, vv, vm, smask, V, H, K, C, LOWP)
    if HAS_DHT:
        dS = tl.load(dhT + s_ptr, mask=smask, other=0.0).to(tl.float32)
        # final-state term of d(log alpha): sum_v dS_T * S_T, partial over this V block
        tl.store(finp + ((iv * tl.num_programs(1) + pid) * K) + kk, tl.sum(dS * S, axis=1), mask=km)
    else:
        dS = tl.zeros([BK, BV], tl.float32)
    tl.debug_barrier()
    for cr in range(0, nch):
        c = nch - 1 - cr
        rows = bos + c * C + rl
        rm = rows < eos
        qe_c = _load_rows(qe + h * K, rows, kk, rm, km, H * K)
        d_c = tl.load(dec + ((c0 + c) * H + h) * K + kk, mask=km, other=0.0)
        vmask = rm[:, None] & vm[None, :]
        v_ptr = rows[:, None] * (H * V) + h * V + vv[None, :]
        do_c = tl.load(do + v_ptr, mask=vmask, other=0.0)
        ke_c = _load_rows(ke + h * K, rows, kk, rm, km, H * K)
        a_c = _load_rows(A + h * C, rows, rl, rm, rl < C, H * C)
        hs = tl.load(hbuf + (((c0 + c) * H + h) * K + kk[:, None]) * V + vv[None, :], mask=smask, other=0.0)
        v_c = tl.load(v + v_ptr, mask=vmask, other=0.0)
        dv_c = mm_tf32(ke_c, dS, LOWP) + mm_tf32(tl.trans(a_c), do_c, LOWP)
        tl.store(dv + v_ptr, dv_c.to(dv.dtype.element_ty), mask=vmask)
        p_rows = (iv * TT + rows[:, None]) * H + h
        d_a = tl.where(rl[:, None] >= rl[None, :], mm(do_c, tl.trans(v_c), LOWP), 0.0)
        tl.store(dAp + p_rows * C + rl[None, :], d_a, mask=rm[:, None])
        kmask = rm[:, None] & km[None, :]
        tl.store(dQp + p_rows * K + kk[None, :], mm_tf32(do_c, tl.trans(hs), LOWP), mask=kmask)
        tl.store(dKp + p_rows * K + kk[None, :], mm_tf32(v_c, tl.trans(dS), LOWP), mask=kmask)
        dS = d_c[:, None] * dS + mm_tf32(tl.trans(qe_c), do_c, LOWP)
    if HAS_INIT:
        tl.store(dh0 + s_ptr, dS, mask=smask)


@triton.jit
def _bwd_chunk(
    v,
    do,
    ke,
    A,
    hbuf,
    dsbuf,
    dv,
    dQp,
    dKp,
    dAp,
    chunk_seq,
    chunk_idx,
    cu,
    coff,
    V,
    TT,
    NVB,
    H: tl.constexpr,
    K: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    LOWP: tl.constexpr,
):
    """One chunk, one slice of NVB V blocks: dv, and this slice's V-sums of dO S^T, v dS^T and dO v^T.

    The chunk-parallel half of the split backward (after the :func:`_walk` pair stored S at chunk starts
    and dS at chunk ends): every chunk's work here is independent, and there are only a few V-slice
    partials instead of one per V block of the fused walk.
    """
    pid = tl.program_id(0)
    h = tl.program_id(1)
    sl = tl.program_id(2)
    seq, ch, rows, rm = _stored_chunk(pid, chunk_seq, chunk_idx, cu, coff, C)
    if seq >= 0:
        rl = tl.arange(0, C)
        kk = tl.arange(0, BK)
        km = kk < K
        ke_c = _load_rows(ke + h * K, rows, kk, rm, km, H * K)
        a_c = _load_rows(A + h * C, rows, rl, rm, rl < C, H * C)
        dq = tl.zeros([C, BK], tl.float32)
        dk = tl.zeros([C, BK], tl.float32)
        da = tl.zeros([C, C], tl.float32)
        for j in range(0, NVB):
            vv = (sl * NVB + j) * BV + tl.arange(0, BV)
            vm = vv < V
            smask = km[:, None] & vm[None, :]
            s_off = ((ch * H + h) * K + kk[:, None]) * V + vv[None, :]
            hs = tl.load(hbuf + s_off, mask=smask, other=0.0)
            dS = tl.load(dsbuf + s_off, mask=smask, other=0.0)
            vmask = rm[:, None] & vm[None, :]
            v_ptr = rows[:, None] * (H * V) + h * V + vv[None, :]
            v_c = tl.load(v + v_ptr, mask=vmask, other=0.0)
            do_c = tl.load(do + v_ptr, mask=vmask, other=0.0)
            dv_c = mm_tf32(ke_c, dS, LOWP) + mm_tf32(tl.trans(a_c), do_c, LOWP)
            tl.store(dv + v_ptr, dv_c.to(dv.dtype.element_ty), mask=vmask)
            dq += mm_tf32(do_c, tl.trans(hs), LOWP)
            dk += mm_tf32(v_c, tl.trans(dS), LOWP)
            da += mm(do_c, tl.trans(v_c), LOWP)
        p_rows = (sl * TT + rows[:, None]) * H + h
        kmask = rm[:, None] & km[None, :]
        tl.store(dQp + p_rows * K + kk[None, :], dq, mask=kmask)
        tl.store(dKp + p_rows * K + kk[None, :], dk, mask=kmask)
        tl.store(dAp + p_rows * C + rl[None, :], tl.where(rl[:, None] >= rl[None, :], da, 0.0), mask=rm[:, None])


@triton.jit
def _sum_partials(ptr, rows, cols, rmask, cmask, row_stride, part_stride, NV):
    acc = _load_rows(ptr, rows, cols, rmask, cmask, row_stride)
    for iv in range(1, NV):
        acc += _load_rows(ptr + iv * part_stride, rows, cols, rmask, cmask, row_stride)
    return acc


@triton.jit
def _bwd_intra(
    q,
    k,
    gp,
    tp,
    dQp,
    dKp,
    dAp,
    dq,
    dkh,
    db,
    dgb,
    dtb,
    chunk_seq,
    chunk_idx,
    cu,
    s_qk,
    s_g,
    scale,
    eps,
    NV,
    TT,
    H: tl.constexpr,
    K: tl.constexpr,
    C: tl.constexpr,
    BKS: tl.constexpr,
    NKS: tl.constexpr,
):
    """One program per (chunk, BKS key columns): everything here is per column but the key norm, so
    the chunk's K columns are split over NKS programs (small [SUB, SUB, BKS] tiles, no register spills).
    The key norm's backward, which sums over all K columns, is left to :func:`_chunk_totals`: this
    writes dkh, the gradient of beta k_hat with beta taken out (float32)."""
    pid = tl.program_id(0) // NKS
    k0 = (tl.program_id(0) % NKS) * BKS
    h = tl.program_id(1)
    seq, c, t0, eos = _chunk_of(pid, chunk_seq, chunk_idx, cu, C)
    if seq >= 0:
        off = h * K
        rl0 = tl.arange(0, C)
        rn = _key_rnorm(k + off, t0 + rl0, t0 + rl0 < eos, s_qk, eps, K, BKS)
        rl, rows, rmask, cols, cmask, loga, kb, qs, b, b_last = _chunk_decay(
            q + off, k + off, gp + off, tp + off, t0, eos, s_qk, s_g, scale, eps, K, C, BKS, k0, rn
        )
        sl = tl.arange(0, SUB)
        for i in tl.static_range(C // SUB):
            rows_i, rm_i, loga_i, kb_i, kh_i, beta_i, g_i, tau_i, qs_i, prefix, b_i = _sub_chunk_gates(
                q + off, k + off, gp + off, tp + off, t0, eos, i, rn, cols, cmask, loga, s_qk, s_g, scale, eps, C
            )
            v_i = rm_i[:, None] & cmask[None, :]
            r_i = prefix + tl.sum(loga_i, axis=0)  # b at this sub-chunk's last row
            # inter-chunk parts, from the V-reduced partials
            dqs = tl.exp(b_i) * _sum_partials(dQp + off, rows_i, cols, rm_i, cmask, H * K, TT * H * K, NV)
            dkb = tl.exp(b_last[None, :] - b_i) * _sum_partials(
                dKp + off, rows_i, cols, rm_i, cmask, H * K, TT * H * K, NV
            )
            # intra-chunk, earlier sub-chunks (columns s < i*SUB) for dq
            if i > 0:
                da_row = _sum_partials(dAp + h * C, rows_i, rl, rm_i, rl < i * SUB, H * C, TT * H * C, NV)
                kg = kb * tl.exp(tl.where(rl[:, None] < i * SUB, prefix[None, :] - b, float("-inf")))
                dqs += tl.exp(b_i - prefix[None, :]) * mm(da_row, kg, False)
            # intra-chunk, later sub-chunks (rows t >= (i+1)*SUB) for dk
            if i < C // SUB - 1:
                da_col = _sum_partials(
                    dAp + h * C + i * SUB,
                    rows,
                    sl,
                    rmask & (rl >= (i + 1) * SUB),
                    sl < SUB,
                    H * C,
                    TT * H * C,
                    NV,
                )
                qg = qs * tl.exp(tl.where(rl[:, None] >= (i + 1) * SUB, b - r_i[None, :], float("-inf")))
                dkb += tl.exp(r_i[None, :] - b_i) * mm(tl.trans(da_col), qg, False)
            # diagonal block, pairwise with s <= t
            da_d = _sum_partials(dAp + h * C + i * SUB, rows_i, sl, rm_i, sl < SUB, H * C, TT * H * C, NV)
            # the diagonal block at once: [t, s, k] tiles, summed over s for dq and over t for dk
            e = da_d[:, :, None] * _pair_decay(b_i, sl)
            dqs += tl.sum(e * kb_i[None, :, :], axis=1)
            dkb += tl.sum(e * qs_i[:, None, :], axis=0)
            ptr = rows_i[:, None] * (H * K) + off + cols[None, :]
            tl.store(dq + ptr, (dqs * scale).to(dq.dtype.element_ty), mask=v_i)
            tl.store(db + ptr, qs_i * dqs - kb_i * dkb, mask=v_i)
            tl.store(dkh + ptr, dkb * beta_i, mask=v_i)
            dbeta = dkb * kh_i
            safe_g = tl.where(g_i > 0.0, g_i, 1.0)
            tl.store(dgb + ptr, tl.where(g_i > 0.0, dbeta * beta_i * tau_i / safe_g, 0.0), mask=v_i)
            tl.store(dtb + ptr, tl.where(g_i > 0.0, dbeta * beta_i * tl.log(safe_g), 0.0), mask=v_i)


@triton.jit
def _chunk_totals(db, tot, k, dkh, dk, chunk_seq, chunk_idx, cu, coff, s_qk, eps, H: tl.constexpr,
                  K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr):
    """Per chunk and head: the sum over the chunk's rows of the d(log-decay) contributions db, and the key
    norm's backward dk = (dkh - k_hat <dkh, k_hat>) / |k| (a sum over all K columns)."""
    seq, cid, rows, rm = _stored_chunk(tl.program_id(0), chunk_seq, chunk_idx, cu, coff, C)
    h = tl.program_id(1)
    if seq >= 0:
        cols = tl.arange(0, BK)
        m = rm[:, None] & (cols < K)[None, :]
        x = _load_rows(db + h * K, rows, cols, rm, cols < K, H * K)
        tl.store(tot + (cid * H + h) * K + cols, tl.sum(x, axis=0), mask=cols < K)
        kr = _load_rows(k + h * K, rows, cols, rm, cols < K, s_qk)
        rn = 1.0 / tl.sqrt(tl.sum(kr * kr, axis=1) + eps)
        kh = kr * rn[:, None]
        g = _load_rows(dkh + h * K, rows, cols, rm, cols < K, H * K)
        dk_r = rn[:, None] * (g - kh * tl.sum(g * kh, axis=1)[:, None])
        tl.store(dk + rows[:, None] * (H * K) + h * K + cols[None, :], dk_r.to(dk.dtype.element_ty), mask=m)


@triton.jit
def _bwd_gates(gp, tp, db, dgb, dtb, tot, finp, dgp, dtp, chunk_seq, chunk_idx, cu, coff, NV, n_seq_h, s_g,
               H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, NB: tl.constexpr):
    """Per chunk and head: d(log alpha_t) = the sum of db over the sequence's rows s >= t plus the final
    state's term, then the softplus and sigmoid links to g_pre and tau_pre.

    Inside the chunk a float32 reverse cumsum; the later chunks' totals (and the final-state partials of
    the walk's V blocks) are summed in float64, since a long document's suffix is a long sum.
    """
    seq, cid, rows, rm = _stored_chunk(tl.program_id(0), chunk_seq, chunk_idx, cu, coff, C)
    h = tl.program_id(1)
    if seq >= 0:
        cols = tl.arange(0, BK)
        cm = cols < K
        carry = tl.zeros([BK], tl.float64)
        for iv in range(0, NV):
            carry += tl.load(finp + (iv * n_seq_h + seq * H + h) * K + cols, mask=cm, other=0.0).to(tl.float64)
        end = tl.load(coff + seq + 1)  # one past the sequence's last chunk
        for j0 in range(cid + 1, end, NB):
            j = j0 + tl.arange(0, NB)
            carry += tl.sum(_load_rows(tot + h * K, j, cols, j < end, cm, H * K).to(tl.float64), axis=0)
        x = _load_rows(db + h * K, rows, cols, rm, cm, H * K)
        dl = (tl.cumsum(x, axis=0, reverse=True).to(tl.float64) + carry[None, :]).to(tl.float32)
        gx = _load_rows(gp + h * K, rows, cols, rm, cm, s_g)
        ty = _load_rows(tp + h * K, rows, cols, rm, cm, s_g)
        g = softplus(gx)
        tau = sigmoid(ty)
        dg = _load_rows(dgb + h * K, rows, cols, rm, cm, H * K) - dl * tau
        dt = _load_rows(dtb + h * K, rows, cols, rm, cm, H * K) - dl * g
        ptr = rows[:, None] * (H * K) + h * K + cols[None, :]
        m = rm[:, None] & cm[None, :]
        tl.store(dgp + ptr, (dg * sigmoid(gx)).to(dgp.dtype.element_ty), mask=m)
        tl.store(dtp + ptr, (dt * tau * (1.0 - tau)).to(dtp.dtype.element_ty), mask=m)


@triton.jit
def _decode(
    q,
    k,
    v,
    gp,
    tp,
    s_in,
    s_out,
    o,
    scale,
    eps,
    V,
    H: tl.constexpr,
    K: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
):
    iv = tl.program_id(0)
    pid = tl.program_id(1)  # = b * H + h
    kk = tl.arange(0, BK)
    vv = iv * BV + tl.arange(0, BV)
    km = kk < K
    vm = vv < V
    one = tl.arange(0, 1)
    valid = (one >= 0)[:, None] & km[None, :]
    kx = pid * K + kk[None, :] + one[:, None]
    loga, kb, _, _, _, _, _ = _gates(
        tl.load(gp + kx, mask=valid, other=0.0).to(tl.float32),
        tl.load(tp + kx, mask=valid, other=0.0).to(tl.float32),
        tl.load(k + kx, mask=valid, other=0.0).to(tl.float32),
        eps,
        valid,
    )
    qs = tl.load(q + kx, mask=valid, other=0.0).to(tl.float32) * scale
    smask = km[:, None] & vm[None, :]
    s_ptr = (pid * K + kk[:, None]) * V + vv[None, :]
    S = tl.load(s_in + s_ptr, mask=smask, other=0.0)
    vt = tl.load(v + pid * V + vv, mask=vm, other=0.0).to(tl.float32)
    S = tl.exp(tl.sum(loga, axis=0))[:, None] * S + tl.sum(kb, axis=0)[:, None] * vt[None, :]
    tl.store(s_out + s_ptr, S, mask=smask)
    out = tl.sum(tl.sum(qs, axis=0)[:, None] * S, axis=0)
    tl.store(o + pid * V + vv, out.to(o.dtype.element_ty), mask=vm)


__all__ = [
    "SUB", "_bwd_chunk", "_bwd_gates", "_bwd_intra", "_bwd_state", "_chunk_totals", "_decode", "_fwd", "_fwd_chunk",
    "_prep", "_walk", "triton",
]
