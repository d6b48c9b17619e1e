"""DDTS through the Triton kernels: same signature as :func:`rodimus.ops.ddts.ddts_chunk`."""

from __future__ import annotations

import torch

from rodimus.ops.ddts.chunk import ddts_chunk
from rodimus.ops.ddts.common import check_ddts_inputs
from rodimus.ops.packing import derived
from rodimus.ops.triton import ddts_kernels as kern
from rodimus.ops.triton._common import head_rows_view, next_pow2

_LOWP = (torch.bfloat16, torch.float16)

# Launch settings of the two sequential walks (V-block width, warps, pipeline stages). A module-level
# table rather than @triton.autotune: the backward's partial-sum buffers are sized by BV, and
# benchmarks/bench_kernels.py --sweep-ddts times alternatives by editing this table.
LAUNCH = {
    "fwd": dict(BV=128, num_warps=4, num_stages=1),  # H200 sweep 2026-11-29: 0.52 ms vs 0.77 (BV 64, 2 stages)
    # "split": True: the walk only stores chunk-start states; _fwd_chunk ("BV_chunk" columns, "chunk_warps"
    # warps) forms o.
    # "split": True moves dv and the V sums out of the walk into the chunk-parallel _bwd_chunk (with
    # "BV_chunk" columns per block and "slices" V slices) for V >= "split_min_v". H200 sweeps, B8 T2048,
    # fwd+bwd: V 4096 split 2.54 ms vs 2.71 walk-only (BV 64, 4 warps); V 2048 split 2.62 vs 1.91.
    "bwd_state": dict(BV=64, num_warps=4, num_stages=1, split=True, split_min_v=4096, BV_chunk=64, slices=4),
}


def _kernel_chunk(chunk_size: int) -> int:
    """The kernel tiles by a power of two in [16, 128]; the torch form's chunk_size is a hint."""
    return min(128, next_pow2(chunk_size, 16))


def _sequences(cu_seqlens, B, T, C, device):
    """cu (int32 row offsets), chunk table (seq, chunk-in-seq per program), per-seq chunk offsets."""
    if cu_seqlens is None:
        cu = torch.arange(B + 1, device=device, dtype=torch.int32) * T
        nch = max(1, -(-T // C))
        n_slots = B * nch
        slot = torch.arange(n_slots, device=device, dtype=torch.int32)
        chunk_seq, chunk_idx = slot // nch, slot % nch
        coff = torch.arange(B + 1, device=device, dtype=torch.int32) * nch
        if T == 0:
            chunk_seq = torch.full_like(chunk_seq, -1)
        return cu, chunk_seq, chunk_idx, coff, n_slots, B * nch
    return derived(cu_seqlens, ("ddts", T, C, device), lambda: _packed_sequences(cu_seqlens, T, C, device))


def _packed_sequences(cu_seqlens, T, C, device):
    cu = cu_seqlens.to(device=device, dtype=torch.int32)
    n = cu.numel() - 1
    nch = (cu.diff() + C - 1) // C
    cum = nch.cumsum(0)
    coff = torch.cat([cum.new_zeros(1), cum]).to(torch.int32)
    n_slots = T // C + n  # an upper bound on sum(ceil(len / C)); spare programs exit
    slot = torch.arange(n_slots, device=device, dtype=torch.int32)
    seq = torch.searchsorted(cum, slot, right=True)
    valid = seq < n
    seq_c = seq.clamp(max=n - 1)
    chunk_idx = (slot - (coff[seq_c])).to(torch.int32)
    chunk_seq = torch.where(valid, seq_c, torch.full_like(seq_c, -1)).to(torch.int32)
    return cu, chunk_seq, chunk_idx, coff, n_slots, n_slots


def _prep(q, k, gp, tp, seqs, scale, eps, C):
    cu, chunk_seq, chunk_idx, coff, n_slots, n_chunks = seqs
    TT, H, K = q.shape
    f32 = dict(device=q.device, dtype=torch.float32)
    qe = torch.empty(TT, H, K, **f32)
    ke = torch.empty(TT, H, K, **f32)
    A = torch.empty(TT, H, C, **f32)
    dec = torch.empty(n_chunks, H, K, **f32)
    if n_slots:
        kern._prep[(n_slots, H, C // kern.SUB_ROWS)](
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
            q.stride(0),
            gp.stride(0),
            scale,
            eps,
            H=H,
            K=K,
            C=C,
            BK=next_pow2(K),
            num_warps=4,
        )
    return qe, ke, dec, A


def _same_row_stride(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels read a pair (q/k, g_pre/tau_pre) with one row stride."""
    if a.stride(0) == b.stride(0):
        return a, b
    return a.contiguous(), b.contiguous()


class _DDTSFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, gp, tp, h0, cu_seqlens, scale, eps, C):
        B, T, H, K = q.shape
        V = v.shape[-1]
        q, k = _same_row_stride(head_rows_view(q), head_rows_view(k))
        gp, tp = _same_row_stride(head_rows_view(gp), head_rows_view(tp))
        v = v.contiguous().view(B * T, H, V)
        seqs = _sequences(cu_seqlens, B, T, C, q.device)
        n_seq = seqs[0].numel() - 1
        qe, ke, dec, A = _prep(q, k, gp, tp, seqs, scale, eps, C)
        o = torch.empty_like(v)
        hT = torch.zeros(n_seq, H, K, V, device=q.device, dtype=torch.float32)
        h0c = h0.contiguous() if h0 is not None else None
        cfg = LAUNCH["fwd"]
        BV = min(cfg["BV"], next_pow2(V))
        split = bool(cfg.get("split", False))
        n_chunks = seqs[5]
        hbuf = torch.empty(n_chunks, H, K, V, device=q.device, dtype=torch.float32) if split else hT
        kern._fwd[(triton_cdiv(V, BV), n_seq * H)](
            v,
            o,
            qe,
            ke,
            dec,
            A,
            h0c if h0c is not None else hT,
            hT,
            hbuf,
            seqs[0],
            seqs[3],
            V,
            H=H,
            K=K,
            C=C,
            BK=next_pow2(K),
            BV=BV,
            HAS_INIT=h0c is not None,
            LOWP=v.dtype in _LOWP,
            SPLIT=split,
            num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"],
        )
        if split and seqs[4]:
            BVc = min(cfg.get("BV_chunk", 64), next_pow2(V))
            kern._fwd_chunk[(seqs[4], H, triton_cdiv(V, BVc))](
                v, o, qe, A, hbuf, seqs[1], seqs[2], seqs[0], seqs[3], V,
                H=H, K=K, C=C, BK=next_pow2(K), BV=BVc, LOWP=v.dtype in _LOWP, num_warps=cfg.get("chunk_warps", 4),
            )  # fmt: skip
        del hbuf
        # the K-sized products are kept, not recomputed: ~0.75 KiB per token against a second _prep launch
        ctx.save_for_backward(q, k, v, gp, tp, h0c, qe, ke, dec, A, *seqs[:4])
        ctx.meta = (B, T, scale, eps, C, seqs[4:])
        return o.view(B, T, H, V), hT

    @staticmethod
    def backward(ctx, do, dhT):
        q, k, v, gp, tp, h0, qe, ke, dec, A, cu, chunk_seq, chunk_idx, coff = ctx.saved_tensors
        B, T, scale, eps, C, (n_slots, n_chunks) = ctx.meta
        TT, H, K = q.shape
        V = v.shape[-1]
        dev = q.device
        n_seq = cu.numel() - 1
        do = do.contiguous().view(TT, H, V)
        cfg = LAUNCH["bwd_state"]
        BV = min(cfg["BV"], next_pow2(V))
        NV = triton_cdiv(V, BV)
        split = bool(cfg.get("split", False)) and cfg.get("split_min_v", 0) <= V
        if split:  # _bwd_chunk: NS slices of NVB blocks of BVc columns; one partial per slice
            BVc = min(cfg.get("BV_chunk", 64), next_pow2(V))
            n_blocks = triton_cdiv(V, BVc)
            NVB = triton_cdiv(n_blocks, min(cfg.get("slices", 4), n_blocks))
            n_part = triton_cdiv(n_blocks, NVB)
        else:
            n_part = NV
        f32 = dict(device=dev, dtype=torch.float32)
        hbuf = torch.empty(n_chunks, H, K, V, **f32)
        dsbuf = torch.empty(n_chunks, H, K, V, **f32) if split else hbuf
        dv = torch.empty_like(v)
        dh0 = torch.empty(n_seq, H, K, V, **f32) if h0 is not None else None
        dQp = torch.empty(n_part, TT, H, K, **f32)
        dKp = torch.empty(n_part, TT, H, K, **f32)
        dAp = torch.empty(n_part, TT, H, C, **f32)
        finp = torch.zeros(NV, n_seq * H, K, **f32)
        dhT = dhT.contiguous() if dhT is not None else None
        kern._bwd_state[(NV, n_seq * H)](
            v,
            do,
            qe,
            ke,
            dec,
            A,
            h0 if h0 is not None else hbuf,
            dhT if dhT is not None else hbuf,
            hbuf,
            dsbuf,
            dv,
            dh0 if dh0 is not None else hbuf,
            dQp,
            dKp,
            dAp,
            finp,
            cu,
            coff,
            V,
            TT,
            H=H,
            K=K,
            C=C,
            BK=next_pow2(K),
            BV=BV,
            HAS_INIT=h0 is not None,
            HAS_DHT=dhT is not None,
            LOWP=v.dtype in _LOWP,
            SPLIT=split,
            num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"],
        )
        if split and n_slots:
            kern._bwd_chunk[(n_slots, H, n_part)](
                v, do, ke, A, hbuf, dsbuf, dv, dQp, dKp, dAp, chunk_seq, chunk_idx, cu, coff, V, TT, NVB,
                H=H, K=K, C=C, BK=next_pow2(K), BV=BVc, LOWP=v.dtype in _LOWP, num_warps=cfg.get("chunk_warps", 4),
            )  # fmt: skip
        del hbuf, dsbuf
        dq = torch.empty(TT, H, K, device=dev, dtype=q.dtype)
        dk = torch.empty(TT, H, K, device=dev, dtype=k.dtype)
        db, dgb, dtb = (torch.empty(TT, H, K, **f32) for _ in range(3))
        if n_slots:
            kern._bwd_intra[(n_slots, H, C // kern.SUB_ROWS)](
                q,
                k,
                gp,
                tp,
                dQp,
                dKp,
                dAp,
                dq,
                dk,
                db,
                dgb,
                dtb,
                chunk_seq,
                chunk_idx,
                cu,
                q.stride(0),
                gp.stride(0),
                scale,
                eps,
                n_part,
                TT,
                H=H,
                K=K,
                C=C,
                BK=next_pow2(K),
                num_warps=4,
            )
        # d log alpha_t = sum over later tokens of the same sequence (+ the final-state term), then the links
        dgp = torch.empty(TT, H, K, device=dev, dtype=gp.dtype)
        dtp = torch.empty(TT, H, K, device=dev, dtype=tp.dtype)
        if n_slots:
            tot = torch.empty(n_chunks, H, K, **f32)
            consts = dict(H=H, K=K, C=C, BK=next_pow2(K))
            kern._chunk_totals[(n_slots, H)](db, tot, chunk_seq, chunk_idx, cu, coff, **consts)
            kern._bwd_gates[(n_slots, H)](
                gp, tp, db, dgb, dtb, tot, finp, dgp, dtp, chunk_seq, chunk_idx, cu, coff, NV, n_seq * H,
                gp.stride(0), **consts, NB=16,
            )  # fmt: skip
        shape4 = (B, T, H)
        return (
            dq.view(*shape4, K),
            dk.view(*shape4, K),
            dv.view(*shape4, V),
            dgp.view(*shape4, K),
            dtp.view(*shape4, K),
            dh0.to(h0.dtype) if dh0 is not None else None,
            None,
            None,
            None,
            None,
        )


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def ddts_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g_pre: torch.Tensor,
    tau_pre: torch.Tensor,
    *,
    scale: float | None = None,
    eps: float = 1e-12,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused chunked DDTS (Triton); arguments and results as :func:`rodimus.ops.ddts.ddts_chunk`.

    ``chunk_size`` is rounded up to a power of two in [16, 128] for the kernel's tiles. Float64
    inputs (gradcheck) go to the torch chunk form. A single token without autograd goes to the
    decode kernel.
    """
    check_ddts_inputs(q, k, v, g_pre, tau_pre, initial_state, cu_seqlens)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if torch.float64 in (q.dtype, k.dtype, v.dtype, g_pre.dtype, tau_pre.dtype):
        return ddts_chunk(
            q,
            k,
            v,
            g_pre,
            tau_pre,
            scale=scale,
            eps=eps,
            initial_state=initial_state,
            cu_seqlens=cu_seqlens,
            chunk_size=chunk_size,
        )
    K = q.shape[-1]
    scale = K**-0.5 if scale is None else float(scale)
    tensors = (q, k, v, g_pre, tau_pre, initial_state)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if q.shape[1] == 1 and cu_seqlens is None and not needs_grad:
        B, _, H, _ = q.shape
        state = (
            initial_state.float().clone()
            if initial_state is not None
            else q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32)
        )
        return ddts_decode_(q, k, v, g_pre, tau_pre, state, scale=scale, eps=eps), state
    return _DDTSFunction.apply(
        q, k, v, g_pre, tau_pre, initial_state, cu_seqlens, scale, float(eps), _kernel_chunk(chunk_size)
    )


def ddts_decode_(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g_pre: torch.Tensor,
    tau_pre: torch.Tensor,
    state: torch.Tensor,
    *,
    scale: float | None = None,
    eps: float = 1e-12,
) -> torch.Tensor:
    """One decoding step for a batch, updating ``state`` [B, H, K, V] (float32, contiguous) in place.

    q, k, g_pre, tau_pre [B, 1, H, K], v [B, 1, H, V]; returns o [B, 1, H, V]. One launch, no
    intermediate tensors, so it can be captured in a CUDA graph.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T != 1:
        raise ValueError(f"ddts_decode_ takes one token (T = 1), got T={T}")
    if state.shape != (B, H, K, V) or state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError(f"state must be a contiguous float32 [B, H, K, V] = {(B, H, K, V)} tensor")
    scale = K**-0.5 if scale is None else float(scale)
    o = torch.empty_like(v)
    BV = min(128, next_pow2(V))
    kern._decode[(triton_cdiv(V, BV), B * H)](
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        g_pre.contiguous(),
        tau_pre.contiguous(),
        state,
        state,
        o,
        scale,
        float(eps),
        V,
        H=H,
        K=K,
        BK=next_pow2(K),
        BV=BV,
        num_warps=4,
    )
    return o
