"""SW-SKA through the Triton kernels: same signature as :func:`rodimus.ops.swska.swska_blocked`."""

from __future__ import annotations

import torch

from rodimus.ops.packing import document_ends, document_starts
from rodimus.ops.swska.blocked import swska_blocked
from rodimus.ops.swska.common import check_swska_inputs
from rodimus.ops.triton import swska_kernels as kern
from rodimus.ops.triton._common import cdiv, next_pow2

_LOWP = (torch.bfloat16, torch.float16)
_TARGET_PROGRAMS = 264  # about two per multiprocessor of an H100/H200

# per kernel: query tile BM, key tile BN (powers of two >= 16), warps, pipeline stages; read at each call,
# so benchmarks can try others. A caller's block_size replaces BM, and T <= 16 takes BM 16.
# H200 2026-12-07, B8 T2048 H16 D128 window 1024, fwd+bwd 1.44 ms with these; every variant tried was slower:
# fwd BM 128 at 8 warps 1.52; dq BM 128 at 8 warps 1.53, 3 stages 1.58; dkdv 8 warps 2.04, BM 32 1.80,
# BN 32 1.83, BN 128 at 8 warps 2.52, 3 stages 1.77 (docs/BENCHMARKS.md, twelfth session)
LAUNCH = {
    "fwd": dict(BM=64, BN=64, num_warps=4, num_stages=2),
    "dq": dict(BM=64, BN=64, num_warps=4, num_stages=2),
    "dkdv": dict(BM=64, BN=64, num_warps=4, num_stages=2),
}


def _blocks(kernel: str, T: int, block_size: int | None) -> tuple[int, int, dict]:
    cfg = dict(LAUNCH[kernel])
    bm, bn = cfg.pop("BM"), cfg.pop("BN")
    if block_size:
        bm = min(128, next_pow2(block_size, 16))
    if T <= 16:
        bm = 16
    return bm, bn, cfg


def _consts(q, v, BM: int, BN: int, km, dstart) -> dict:
    """The compile-time arguments every SW-SKA kernel takes."""
    H, D, DV = q.shape[2], q.shape[3], v.shape[-1]
    return dict(
        H=H, D=D, DV=DV, BD=next_pow2(D), BDV=next_pow2(DV), BM=BM, BN=BN,
        HAS_KM=km is not None, HAS_DOC=dstart is not None, LOWP=q.dtype in _LOWP,
    )  # fmt: skip


def _int8_mask(key_mask: torch.Tensor | None, device) -> torch.Tensor | None:
    """The key mask as the kernels read it: int8, contiguous [B, S]."""
    return key_mask.to(device=device, dtype=torch.int8).contiguous() if key_mask is not None else None


def _meta(q, k, v, key_mask, cu_seqlens):
    B, T, H, D = q.shape
    S = k.shape[1]
    km = _int8_mask(key_mask, q.device)
    docs = None
    if cu_seqlens is not None:  # first row and one past the last row of each row's document
        docs = (document_starts(cu_seqlens, T, q.device), document_ends(cu_seqlens, T, q.device))
    return B, T, H, D, S, v.shape[-1], km, docs


class _SWSKAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_mask, cu_seqlens, window, scale, block_size):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, T, H, D, S, DV, km, docs = _meta(q, k, v, key_mask, cu_seqlens)
        dstart, dend = docs if docs is not None else (None, None)
        BM, BN, cfg = _blocks("fwd", T, block_size)
        o = torch.empty(B, T, H, DV, device=q.device, dtype=q.dtype)
        lse = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
        dummy = lse
        kern._fwd[(cdiv(T, BM), B * H)](
            q,
            k,
            v,
            o,
            lse,
            km if km is not None else dummy,
            dstart if dstart is not None else dummy,
            T,
            S,
            window,
            scale,
            **_consts(q, v, BM, BN, km, dstart),
            **cfg,
        )
        ctx.save_for_backward(q, k, v, o, lse, km, dstart, dend)
        ctx.meta = (window, scale, block_size)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, km, dstart, dend = ctx.saved_tensors
        window, scale, block_size = ctx.meta
        B, T, H, D = q.shape
        S = k.shape[1]
        do = do.contiguous()
        delta = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
        if B * T:
            DV = o.shape[-1]
            kern._bwd_delta[(B * T,)](o, do, delta, T, H=H, DV=DV, BH=next_pow2(H), BDV=next_pow2(DV), num_warps=4)
        dummy = lse
        kmp = km if km is not None else dummy
        dsp = dstart if dstart is not None else dummy
        dq = torch.empty_like(q)
        BM, BN, cfg = _blocks("dq", T, block_size)
        kern._bwd_dq[(cdiv(T, BM), B * H)](
            q, k, v, do, lse, delta, dq, kmp, dsp, T, S, window, scale, **_consts(q, v, BM, BN, km, dstart), **cfg
        )
        BM, BN, cfg = _blocks("dkdv", T, block_size)
        n_kb = cdiv(S, BN)
        groups = max(1, min(H, _TARGET_PROGRAMS // max(1, n_kb * B)))
        hpg = cdiv(H, groups)
        groups = cdiv(H, hpg)
        dkp = torch.empty(groups, B, S, D, device=q.device, dtype=torch.float32)
        dv = torch.empty_like(v)
        kern._bwd_dkdv[(n_kb, B, groups)](
            q,
            k,
            v,
            do,
            lse,
            delta,
            dkp,
            dv,
            kmp,
            dsp,
            dend if dend is not None else dummy,
            T,
            S,
            window,
            scale,
            hpg,
            **_consts(q, v, BM, BN, km, dstart),
            **cfg,
        )
        return dq, dkp.sum(0).to(k.dtype), dv, None, None, None, None, None


# one-token decode: key tile BN, warps, the fewest keys per span, the most spans per (batch, head) (the
# merge holds every span's partial output in registers) and the programs aimed for over all of them.
# H100 2026-12-08, H16 D128 bf16, us per call inside a CUDA graph, B1 / B16 at 1K keys: 7.3 / 36.4 (BN 64,
# 4 warps, spans of 256: 12.0 / 49.3; the training kernel 19.4 / 34.7; SDPA, key repeated, 7.4 / 28.1);
# at 16K keys 46.9 / 434.9 (67.8 / 647.0; 364.4 / 452.0; 30.8 / 378.9). docs/BENCHMARKS.md, fifteenth session.
# "dot": tensor-core products of the padded query row (_decode_split's docstring) where its operands share a
# dtype, with the first of "dot_tiles" (rows up to, BN, warps) that holds B x H rows (none: BN and
# num_warps as above). Its pipelined tiles take shared memory (benchmarks/kernel_resources.py --decode, H16
# D128 bf16: 139 KB at BN 128, one program per SM; 72 KB at BN 64, 38 KB at BN 32; row sums 0.5-2 KB).
# H100 2026-12-08 (benchmarks/swska_decode.py, same run), us per call at 512 / 1K / 4K / 16K keys, row sums
# against dots: B1 7.2 / 7.3 / 11.2 / 46.9 vs 6.4 / 6.6 / 10.4 / 29.4 (BN 64, 4 warps); B4 7.9 / 11.2 /
# 43.4 / 140.1 vs 7.9 / 10.5 / 31.4 / 103.9 (same); B16 15.3 / 36.1 / 115.2 / 432.5 vs 16.3 / 30.2 / 97.5 /
# 365.6 (BN 32, 2 warps; BN 64 at 4 warps 19.1 / 37.5 / 124.3 / 488.5); SDPA 8.1 / 7.4 / 11.4 / 30.8 (B1),
# 11.7 / 28.1 / 95.7 / 382.3 (B16)
DECODE = dict(BN=128, num_warps=2, min_span=128, max_spans=64, programs=_TARGET_PROGRAMS, dot=True,
              dot_tiles=((64, 64, 4), (None, 32, 2)))  # fmt: skip


def _decode_tile(rows: int, dot: bool) -> tuple[int, int]:
    """BN and warps of the decode split kernel for B x H rows (see DECODE)."""
    if dot:
        for max_rows, BN, warps in DECODE.get("dot_tiles", ()):
            if max_rows is None or rows <= max_rows:
                return BN, warps
    return DECODE["BN"], DECODE["num_warps"]


def _decode(q, k, v, key_mask, window: int, scale: float) -> torch.Tensor:
    """One query token per sequence against its cache (no autograd): the visible keys [lo, S) are cut into
    spans, one program per (batch, head, span), then one merge per (batch, head) (flash-decoding). The
    training kernel would give each (batch, head) one program walking every key with a 16-row tile."""
    B, _, H, D = q.shape
    S, DV = k.shape[1], v.shape[-1]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    lo = max(0, S - 1 - window)
    n_keys = S - lo
    cfg = DECODE
    BD, BDV = next_pow2(D), next_pow2(DV)
    # a tensor-core tile's smallest side is 16; its operands share a dtype
    dot = cfg["dot"] and min(BD, BDV) >= 16 and k.dtype == v.dtype == q.dtype
    BN, warps = _decode_tile(B * H, dot)
    dot = dot and BN >= 16
    ns = max(1, min(cdiv(cfg["programs"], B * H), cdiv(n_keys, cfg["min_span"]), cfg["max_spans"]))
    span = cdiv(cdiv(n_keys, ns), BN) * BN
    ns = cdiv(n_keys, span)
    o = torch.empty(B, 1, H, DV, device=q.device, dtype=q.dtype)
    if B * H == 0:
        return o
    n = B * H * ns  # the spans' partials: outputs [n, BDV], maxima [n], sums [n], in one allocation
    opart, mpart, lpart = torch.empty(n * (BDV + 2), device=q.device, dtype=torch.float32).split([n * BDV, n, n])
    km = _int8_mask(key_mask, q.device)
    kern._decode_split[(B * H, ns)](
        q, k, v, km if km is not None else mpart, opart, mpart, lpart, S, lo, span, scale,
        q.stride(0), q.stride(2), k.stride(0), k.stride(1), v.stride(0), v.stride(1), v.stride(2), ns,
        H=H, D=D, DV=DV, BD=BD, BDV=BDV, BN=BN, HAS_KM=km is not None, DOT=dot,
        LOWP=q.dtype != torch.float32, num_warps=warps,
    )  # fmt: skip
    kern._decode_combine[(B * H,)](opart, mpart, lpart, o, DV, ns, BNS=next_pow2(ns), DV=DV, BDV=BDV)
    return o


def swska_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int,
    scale: float | None = None,
    key_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    block_size: int | None = None,
) -> torch.Tensor:
    """Flash-style SW-SKA (Triton); arguments and result as :func:`rodimus.ops.swska.swska_blocked`.

    ``block_size`` sets the query tile (rounded to a power of two in [16, 128]). One token against a
    cache (T = 1, no cu_seqlens) without autograd takes the decode kernels (:func:`_decode`); with a
    gradient it is the training kernel with a 16-row tile. Keys and values in another dtype than q are
    cast to it, except in the decode kernels, which read them as they are (a float32 cache is then
    neither copied every step nor rounded). Float64 goes to the torch form.
    """
    check_swska_inputs(q, k, v, window, key_mask, cu_seqlens)
    if torch.float64 in (q.dtype, k.dtype, v.dtype):
        return swska_blocked(
            q,
            k,
            v,
            window=window,
            scale=scale,
            key_mask=key_mask,
            cu_seqlens=cu_seqlens,
            block_size=block_size,
        )
    if q.shape[1] == 0:
        return q.new_zeros(*q.shape[:3], v.shape[-1])
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if q.shape[1] == 1 and cu_seqlens is None and not needs_grad:
        return _decode(q, k, v, key_mask, int(window), scale)  # reads k, v in their own dtype
    k, v = k.to(q.dtype), v.to(q.dtype)
    return _SWSKAFunction.apply(q, k, v, key_mask, cu_seqlens, int(window), scale, block_size)
