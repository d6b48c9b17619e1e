"""DDTS through the Triton kernels: same signature as :func:`rodimus.ops.ddts.ddts_chunk`."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from rodimus.ops.ddts.chunk import ddts_chunk
from rodimus.ops.ddts.common import check_ddts_inputs
from rodimus.ops.matmul import bmm_into
from rodimus.ops.packing import derived
from rodimus.ops.triton import ddts_kernels as kern
from rodimus.ops.triton._common import cdiv, head_rows_view, next_pow2

_LOWP = (torch.bfloat16, torch.float16)

DEFAULT_CHUNK = 64  # the kernels' chunk when the caller gives none

# Launch settings (V-block width, warps, pipeline stages). A module-level table rather than
# @triton.autotune: the backward's partial-sum buffers are sized by BV, and
# benchmarks/bench_kernels.py --only sweep times alternatives by editing this table.
LAUNCH = {
    # the fused forward walk: one program per (V block, sequence, head). "split": True, or a fused grid of
    # at most "split_max_programs" programs (long sequences, small batch), uses _walk + the chunk-parallel
    # _fwd_chunk ("BV_chunk" columns, "chunk_warps" warps) instead; "save_states" then keeps the walk's
    # states for a split backward (one walk less there, one state buffer per layer more in memory).
    # H200 2026-11-29: fused 0.52 ms vs 0.77 (BV 64, 2 stages) at V 4096; split slower at B8 T2048 (V 2048:
    # 0.49 ms vs 0.41), faster at B2 T8192 (0.77 vs 0.92); save_states there: fwd+bwd 1.41 ms vs 1.65.
    # "split_with_grad": split whenever a split backward will take the saved states. Sixth session, 342M
    # training (packed documents, graphs): T2048 100,202 tok/s vs 97,903 fused; T8192 98,034 vs 92,690
    # (the fused walk waits on the longest document there)
    # "lowp_products": a forward without gradients in bf16 stores qe, ke and A in bf16 and multiplies in
    # bf16, with "fast_stages" pipeline stages, its V blocks halved (not below "fast_min_BV") while the
    # fused grid has fewer than "fast_min_programs" programs, and then "fast_stages_halved" stages (the
    # smaller tile leaves room for them). H100 2026-12-07, V4096, B8 T2048 kernel
    # times: _fwd 321 us with float32 products and tf32 dots, 135 with bf16 (1 stage), 114 with 2 stages
    # (8 warps 211-239; BV 64 153, BV 32 191); B2 T8192 as graphs: BV 32 269 us, BV 64 291, split 425.
    # H100 2026-12-08, B2 T8192 (BV 32, 256 programs of 128 chunks) as graphs: 2 / 3 / 4 stages 272 / 216
    # / 336 us; 3 stages at BV 64 (128 programs) 234; B8 T2048 (BV 128): 3 stages 167 vs 148 with 2
    # "lowp_with_grad": a bf16 forward with gradients takes that fused walk too (float32 products stored for
    # the backward, bf16 dots for the output, no states kept: the backward walks them again). H200
    # 2026-12-07, same call: DDTS fwd+bwd B8 T2048 V4096 1.657 -> 1.453 ms (graphs 1.644 -> 1.443), mixer
    # layer as a graph 7.127 -> 6.898 ms, 342M training (graphs) T2048 109,379 -> 111,512 tok/s, T8192
    # 109,207 -> 108,677 (inside the ~1% spread)
    # "segment": the fused walk over segments of this many chunks, in parallel, when a sequence can be longer
    # than "segment_min_chunks" (0: off). H100 2026-12-08, B2 T8192 V4096 bf16 forward as graphs: off 269-271
    # us (_fwd 236), segments of 16 / 32 / 64 chunks 384-416 / 356-386 / 418 (_fwd 110-118 but the walk to
    # the segments' entering states 104-146 and the carry 14-47, whatever its blocks); 342M training T8192
    # 99,854 off vs 95,038-98,229 tok/s
    "fwd": dict(BV=128, num_warps=4, num_stages=1, split_max_programs=64, save_states=True, split_with_grad=True,
                lowp_products=True, fast_stages=2, fast_stages_halved=3, fast_min_BV=32, fast_min_programs=256,
                lowp_with_grad=True, segment=0, segment_min_chunks=64),
    # the fused backward walk; the split form (two _walk passes and the chunk-parallel _bwd_chunk with
    # "BV_chunk" columns per block, "slices" V slices, "chunk_warps" warps, "chunk_stages" pipeline stages;
    # _fwd_chunk reads the last two from "fwd", default 4 warps and 3 stages as Triton's own) for V >=
    # "split_min_v". H200 2026-12-04, T8192 training: 8 warps, 4 slices, 1-2 stages all within the ~1%
    # run-to-run spread. H100 2026-12-08, DDTS fwd+bwd V4096 as graphs, _bwd_chunk alone: 3 / 2 / 1 stages
    # 635 / 495 / 566 us (B8 T2048), 634 / 493 / 562 (B2 T8192); 8 warps at 2 stages 737
    # H200 2026-11-29, B8 T2048 C64, per-kernel sums: V 2048 1.35 ms vs 1.46 fused, V 4096 2.08 vs 2.28;
    # B2 T8192 V 2048: 2.28 vs 2.87
    "bwd_state": dict(BV=64, num_warps=4, num_stages=1, split=True, split_min_v=2048, BV_chunk=64, slices=2,
                      chunk_stages=2),
    # _walk: [BK, BV] state blocks, 3 stages (H100 2026-12-08, DDTS fwd+bwd as graphs with _bwd_chunk at 2
    # stages: walks 442 / 407 / 449 us at 2 / 3 / 4 stages, B8 T2048; 482 / 442 / 451 at B2 T8192; 342M
    # training, graphs, tok/s 2 / 3 stages: T8192 101,311 / 101,654, T2048 104,697 / 103,658, inside the
    # ~1% spread). A walk lasts as long as its longest document, so smaller
    # blocks (more programs, on more SMs, per document) win on packed training data: H100 2026-12-07, 342M,
    # T8192 B2 graphs, tok/s BK16 x BV64 95,088-95,172 vs BK32 x BV128 93,225-93,664 (three runs each),
    # BK16 x BV128 94,429, BK32 x BV64 93,494; T2048 B8 equal (95,627 vs 95,642). (BK32 x BV128 was the
    # fastest of nine on the H200 at equal documents of 2,048, B8, V 2048 and 4096.)
    # "lowp_states": the split forward stores its states in bf16 for bf16 inputs when no gradient is
    # needed (outputs as accurate; with bf16 states the gate gradients, a difference of two large sums,
    # missed the 1e-2 bf16 budget: 1.4-2.6e-2 vs 0.4e-2 with float32)
    # "segment": cut documents into segments of this many chunks when a sequence can be longer than
    # "segment_min_chunks" (0: off): two light walks and a carry step per segment instead of one walk
    # step per chunk of the longest document. Off: H200 2026-12-04, 359M training, graphs, tok/s off / 8 / 16 /
    # 32: T8192 B2 99,850 / 95,969 / 97,386 / 96,087; T2048 B8 101,406 / - / 97,079 / - (the walks' GPU time fell
    # only 12.3 -> 11.4 ms per step; the carry launches and the final-state products cost more)
    # "starts_gemm": where every segment is as long (a plain batch), the segments' ends from zeros (forward
    # and reverse walks) as one batched GEMM (_segment_ends_gemm) instead of a walk. H100 2026-12-08, B2
    # T8192 forward as graphs: 32-chunk segments 237-239 us (the GEMM 48-49, _segment_keys 22, the carry 16)
    # against 216 for the unsegmented walk at 3 stages; fwd+bwd with walk segments of 16 / 32: 1,836 / 1,826
    # against 1,661 off
    "walk": dict(BK=16, BV=64, num_warps=4, num_stages=3, lowp_states=True, segment=0, segment_min_chunks=48,
                 starts_gemm=False),
    # per-chunk kernels. H200 2026-11-29, B8 T2048 C64: the diagonal 16x16 blocks as one [16, 16, K] tile
    # instead of a loop over columns took _prep 0.180 -> 0.141 ms (0.127 with 8 warps), _bwd_intra
    # 0.396 -> 0.210 ms (8 warps: 0.237)
    # _prep: one program per chunk, "BK" key columns at a time, A as one dot per sub-chunk (see the
    # kernel). H100 2026-12-07, B8 T2048 K64: 38 us (4 warps, BK 16) vs 117-119 for the program per
    # sub-chunk with [16, 16, K] diagonal tiles it replaced; 8 warps 56, 2 warps 45, BK 32 28-30 (8 warps 47)
    "prep": dict(num_warps=4, BK=32),
    # _bwd_intra: one program per chunk and "BK" key columns (each column's gradients are independent
    # but for the key norm, done in _chunk_totals). All 64 columns in one program spilled 1.3 KB of
    # registers per thread on sm_90 (ptxas, 4 warps; 336 B at 8). H100 2026-12-07, same shape: 180 us vs
    # 225 chunk-wide; 4 warps 207, BK 32 243, BK 64 237 (8 warps each)
    "intra": dict(num_warps=8, BK=16),
}


def _kernel_chunk(chunk_size: int) -> int:
    """The kernel tiles by a power of two in [16, 128]; the torch form's chunk_size is a hint."""
    return min(128, next_pow2(chunk_size, 16))


def _sequences(cu_seqlens, B, T, C, device):
    """cu (int32 row offsets), chunk table (seq, chunk-in-seq per program), per-seq chunk offsets."""
    if cu_seqlens is None:
        return _batch_sequences(B, T, C, torch.device(device))
    return derived(cu_seqlens, ("ddts", T, C, device), lambda: _packed_sequences(cu_seqlens, T, C, device))


@functools.lru_cache(maxsize=64)
def _batch_sequences(B, T, C, device):
    """The tables of a plain batch, built once per shape: four small launches fewer on every call."""
    cu = torch.arange(B + 1, device=device, dtype=torch.int32) * T
    nch = max(1, cdiv(T, C))
    n_slots = B * nch
    slot = torch.arange(n_slots, device=device, dtype=torch.int32)
    chunk_seq, chunk_idx = slot // nch, slot % nch
    coff = torch.arange(B + 1, device=device, dtype=torch.int32) * nch
    if T == 0:
        chunk_seq = torch.full_like(chunk_seq, -1)
    return cu, chunk_seq, chunk_idx, coff, n_slots, B * nch


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


class _SegmentTable(NamedTuple):
    """Segments of ``seg`` chunks tiling every document in order, built on the device with a static
    ``n_seg`` (an upper bound; spare segments are empty) so that it can be captured in a graph."""

    cu: torch.Tensor  # row bounds [n_seg + 1]
    coff: torch.Tensor  # first global chunk [n_seg]
    fin_fwd: torch.Tensor  # the document a segment ends in forward walk order, else -1 [n_seg]
    fin_rev: torch.Tensor  # the same for the reverse walk [n_seg]
    first: torch.Tensor  # each document's first segment [n_doc + 1]
    last: torch.Tensor  # each document's last segment (int64, to gather its final state) [n_doc]
    n_seg: int
    seg: int
    rows: int  # every segment's length where all are equal and back to back (a plain batch), else 0


def _segments(seqs, T, C, cu_seqlens, entry: str = "walk") -> _SegmentTable | None:
    """The segment table of a segmented walk (LAUNCH[entry]["segment"] chunks a segment), or None when it
    would not pay."""
    seg = LAUNCH[entry].get("segment", 0)
    if not seg or cdiv(T, C) <= max(seg, LAUNCH[entry].get("segment_min_chunks", 0)):
        return None
    if cu_seqlens is None:
        return _batch_segment_table(seqs[0].numel() - 1, T, C, seg, seqs[0].device)
    return derived(cu_seqlens, ("ddts_seg", T, C, seg, seqs[0].device), lambda: _segment_table(seqs, C, seg))


@functools.lru_cache(maxsize=64)
def _batch_segment_table(B, T, C, seg, device) -> _SegmentTable:
    """A plain batch's segment table, built once per shape (as :func:`_batch_sequences`)."""
    return _segment_table(_batch_sequences(B, T, C, device), C, seg, seg * C if T % (seg * C) == 0 else 0)


def _segment_table(seqs, C, seg, rows=0) -> _SegmentTable:
    cu, coff, n_chunks = seqs[0].long(), seqs[3].long(), seqs[5]
    n = cu.numel() - 1
    nseg = ((coff.diff() + seg - 1) // seg).clamp(min=1)  # an empty document keeps one (empty) segment
    cum = nseg.cumsum(0)
    first = torch.cat([cum.new_zeros(1), cum])
    n_seg = n_chunks // seg + n  # sum(ceil(chunks / seg)) <= n_chunks / seg + n
    slot = torch.arange(n_seg, device=cu.device)
    doc = torch.searchsorted(cum, slot, right=True)
    valid = doc < n
    d = doc.clamp(max=n - 1)
    j = slot - first[d]
    start = torch.where(valid, torch.minimum(cu[d] + j * seg * C, cu[d + 1]), cu[n])
    none = torch.full_like(d, -1)
    i32 = dict(dtype=torch.int32)
    return _SegmentTable(
        cu=torch.cat([start, cu[n:]]).to(**i32),
        coff=torch.where(valid, coff[d] + j * seg, 0).to(**i32),
        fin_fwd=torch.where(valid & (j == nseg[d] - 1), d, none).to(**i32),
        fin_rev=torch.where(valid & (j == 0), d, none).to(**i32),
        first=first.to(**i32),
        last=first[1:] - 1,
        n_seg=n_seg,
        seg=seg,
        rows=rows,
    )


def _prep(q, k, gp, tp, seqs, scale, eps, C, dtype=torch.float32):
    """qe, ke, dec, A (:func:`kern._prep`); ``dtype`` for qe, ke and A (bf16 for a forward without
    gradients, whose dots then take them as they are), dec stays float32."""
    cu, chunk_seq, chunk_idx, coff, n_slots, n_chunks = seqs
    TT, H, K = q.shape
    f32 = dict(device=q.device, dtype=torch.float32)
    qe = torch.empty(TT, H, K, device=q.device, dtype=dtype)
    ke = torch.empty(TT, H, K, device=q.device, dtype=dtype)
    A = torch.empty(TT, H, C, device=q.device, dtype=dtype)
    dec = torch.empty(n_chunks, H, K, **f32)
    if n_slots:
        kern._prep[(n_slots, H)](
            q, k, gp, tp, qe, ke, dec, A, chunk_seq, chunk_idx, cu, coff, q.stride(0), gp.stride(0), scale, eps,
            H=H, K=K, C=C, BKS=min(LAUNCH["prep"]["BK"], next_pow2(K)), LOWP=q.dtype in _LOWP,
            num_warps=LAUNCH["prep"]["num_warps"],
        )  # fmt: skip
    return qe, ke, dec, A


def _partials(n_part: int, TT: int, H: int, K: int, C: int, dev) -> tuple[torch.Tensor, ...]:
    """Float32 partial sums of dQ, dK and dA, one per V slice of the backward (summed by ``_bwd_intra``)."""
    f32 = dict(device=dev, dtype=torch.float32)
    return tuple(torch.empty(n_part, TT, H, n, **f32) for n in (K, K, C))


def _split_backward(V: int) -> bool:
    cfg = LAUNCH["bwd_state"]
    return bool(cfg.get("split", False)) and cfg.get("split_min_v", 0) <= V


def _final_term(dhT, hT):
    """The final-state term's partials in the layout :func:`kern._walk`'s FINP writes ([1, n_seq * H, K]),
    from a stored final state; None without dhT."""
    return None if dhT is None else (dhT * hT).sum(-1).view(1, -1, hT.shape[-2])


def _walk(a, b, dec, x0, xT, seqs, H, K, V, C, lowp, *, reverse=False, dhT=None, lowp_states=False, segs=None):
    """Run :func:`kern._walk`: (the per-chunk state buffer, the final-state term's partials or None).

    x0 / xT: the state before the first / after the last chunk walked (None: zeros / not stored).
    segs: a :func:`_segments` table, to walk segments of the documents (three launches) instead."""
    cfg = LAUNCH["walk"]
    cu, coff, n_chunks = seqs[0], seqs[3], seqs[5]
    n_doc = cu.numel() - 1
    n_sh = n_doc * H
    xbuf = torch.empty(n_chunks, H, K, V, device=a.device, dtype=torch.bfloat16 if lowp_states else torch.float32)
    (NK, NV), consts = _walk_blocks(H, K, V, C, reverse)
    consts.update(LOWP=lowp, num_stages=cfg["num_stages"])
    if segs is not None and n_sh:
        ends = _segment_starts(a, b, dec, x0, seqs, segs, H, K, V, C, lowp, reverse=reverse)
        if dhT is not None and xT is None:
            xT = torch.empty(n_doc, H, K, V, device=a.device, dtype=torch.float32)
        fin = segs.fin_rev if reverse else segs.fin_fwd
        kern._walk[(NK, NV, segs.n_seg * H)](
            a, b, dec, ends, xbuf, xT if xT is not None else xbuf, ends, ends, fin, segs.cu, segs.coff, V,
            HAS_INIT=True, STORE_FINAL=xT is not None, FINP=False, MODE=2, **consts,
        )  # fmt: skip
        return xbuf, _final_term(dhT, xT)
    finp = torch.empty(NV, n_sh, K, device=a.device, dtype=torch.float32) if dhT is not None else None
    if n_sh:
        kern._walk[(NK, NV, n_sh)](
            a, b, dec, x0 if x0 is not None else xbuf, xbuf, xT if xT is not None else xbuf,
            dhT if dhT is not None else xbuf, finp if finp is not None else xbuf, cu, cu, coff, V,
            HAS_INIT=x0 is not None, STORE_FINAL=xT is not None, FINP=dhT is not None, **consts,
        )  # fmt: skip
    return xbuf, finp


def _segment_starts(a, b, dec, x0, seqs, segs, H, K, V, C, lowp, *, reverse=False) -> torch.Tensor:
    """The state entering each segment of a :func:`_segments` table, [n_seg, H, K, V] float32 (zeros for
    spare segments): every segment's end from zeros, found in parallel, then one carry step per segment.
    What a segmented walk, or a walk with outputs over segments, starts from."""
    cu, coff = seqs[0], seqs[3]
    (NK, NV), consts = _walk_blocks(H, K, V, C, reverse)
    if segs.rows and LAUNCH["walk"].get("starts_gemm", False):
        ends = _segment_ends_gemm(a, b, dec, segs, H, K, V, C, lowp, reverse)
    else:  # a walk from zeros per segment, storing only its end
        ends = torch.empty(segs.n_seg, H, K, V, device=a.device, dtype=torch.float32)
        kern._walk[(NK, NV, segs.n_seg * H)](
            a, b, dec, ends, ends, ends, ends, ends, segs.fin_rev if reverse else segs.fin_fwd, segs.cu,
            segs.coff, V, HAS_INIT=False, STORE_FINAL=True, FINP=False, MODE=1, LOWP=lowp,
            num_stages=LAUNCH["walk"]["num_stages"], **consts,
        )  # fmt: skip
    kern._walk_carry[(NK, NV, (cu.numel() - 1) * H)](
        dec, x0 if x0 is not None else ends, ends, cu, coff, segs.cu, segs.coff, segs.first, V,
        HAS_INIT=x0 is not None, SEG=next_pow2(segs.seg), **consts,
    )  # fmt: skip
    return ends


def _segment_ends_gemm(a, b, dec, segs, H, K, V, C, lowp, reverse=False) -> torch.Tensor:
    """Each segment's end state from zeros (in walk order) as batched GEMMs, for segments of
    ``segs.rows`` rows back to back.

    A walk from zeros over a segment's chunks (X <- dec_c X + a_c^T b_c) ends at sum_c w_c a_c^T b_c, w_c
    the product of dec over the chunks walked after c (forward: the later ones; REVERSE: the earlier
    ones): a scaled per chunk and transposed in one launch (:func:`kern._segment_keys`), then [K, rows] @
    [rows, V] per segment and head, reading b once (the walk reads it once per K block and steps chunk by
    chunk). bf16 operands where the walk's dots take them (lowp), float32 sums. The segment each document
    walks last is left out (one batched GEMM per document and head over its other segments): nothing
    reads its end, and b is the bulk of the work.
    """
    rows = segs.rows
    n_real = a.shape[0] // rows
    aT = torch.empty(n_real * H, K, rows, device=a.device, dtype=b.dtype if lowp else torch.float32)
    kern._segment_keys[(n_real * H,)](
        a, dec, aT, rows, a.stride(0), H=H, K=K, C=C, BK=next_pow2(K), SEG=next_pow2(rows // C), REVERSE=reverse,
        num_warps=4,
    )  # fmt: skip
    aT, b = aT.view(n_real, H, K, rows), b.view(n_real, rows, H, V)
    ends = torch.empty(segs.n_seg, H, K, V, device=a.device, dtype=torch.float32)
    ends[n_real:].zero_()  # the table's spare segments (its n_seg is an upper bound)
    n_doc = segs.first.numel() - 1
    per_doc = n_real // n_doc
    for doc in range(n_doc):
        lo = doc * per_doc + (1 if reverse else 0)
        used = slice(lo, lo + per_doc - 1)  # all of the document's segments but the one it walks last
        for h in range(H):  # strided batches of one head: b is not copied into a per-head layout
            bmm_into(ends[used, h], aT[used, h], b[used, :, h])
    return ends


def _walk_blocks(H: int, K: int, V: int, C: int, reverse: bool) -> tuple[tuple[int, int], dict]:
    """The walks' [BK, BV] state blocks (LAUNCH["walk"]): the grid's K and V dimensions and the
    compile-time arguments :func:`kern._walk` and :func:`kern._walk_carry` share."""
    cfg = LAUNCH["walk"]
    BK, BV = min(cfg["BK"], next_pow2(K)), min(cfg["BV"], next_pow2(V))
    consts = dict(H=H, K=K, C=C, BK=BK, BV=BV, REVERSE=reverse, num_warps=cfg["num_warps"])
    return (cdiv(K, BK), cdiv(V, BV)), consts


def _same_row_stride(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels read a pair (q/k, g_pre/tau_pre) with one row stride."""
    if a.stride(0) == b.stride(0):
        return a, b
    return a.contiguous(), b.contiguous()


def _fused_block(cfg: dict, fast: bool, n_walks: int, V: int) -> tuple[int, int]:
    """The fused walk's V block and pipeline stages. The block is LAUNCH["fwd"]["BV"], halved with bf16
    products (not below "fast_min_BV") until n_walks sequences x V blocks make "fast_min_programs" programs
    (its latency is per program). A halved block is a smaller tile, so more loads fit in flight:
    "fast_stages_halved" stages then, else "fast_stages"."""
    BV = min(cfg["BV"], next_pow2(V))
    if not fast:
        return BV, cfg["num_stages"]
    min_bv, min_programs = cfg.get("fast_min_BV", BV), cfg.get("fast_min_programs", 0)
    halved = False
    while min_bv < BV and n_walks * cdiv(V, BV) < min_programs:
        BV, halved = BV // 2, True
    stages = cfg.get("fast_stages", cfg["num_stages"])
    return BV, cfg.get("fast_stages_halved", stages) if halved else stages


class _DDTSFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, gp, tp, h0, cu_seqlens, scale, eps, C, want_final, grad):
        B, T, H, K = q.shape
        V = v.shape[-1]
        q, k = _same_row_stride(head_rows_view(q), head_rows_view(k))
        gp, tp = _same_row_stride(head_rows_view(gp), head_rows_view(tp))
        v = v.contiguous().view(B * T, H, V)
        seqs = _sequences(cu_seqlens, B, T, C, q.device)
        n_seq = seqs[0].numel() - 1
        cfg = LAUNCH["fwd"]
        lowp = v.dtype in _LOWP
        # with a gradient the backward rebuilds the states in float32 from float32 products, so only the
        # output takes the bf16 dots: the products stay float32 and the fused walk keeps no states
        fused_grad = grad and lowp and cfg.get("lowp_with_grad", False)
        fast = lowp and cfg.get("lowp_products", False) and (not grad or fused_grad)
        qe, ke, dec, A = _prep(q, k, gp, tp, seqs, scale, eps, C, v.dtype if fast and not grad else torch.float32)
        o = torch.empty_like(v)

        def final_states(n: int) -> torch.Tensor | None:  # every walk program writes its block of them
            return torch.empty(n, H, K, V, device=q.device, dtype=torch.float32) if want_final else None

        h0c = h0.contiguous() if h0 is not None else None
        saved_states = None
        BV, stages = _fused_block(cfg, fast, n_seq * H, V)
        # the backward takes the states
        keep = grad and not fused_grad and cfg.get("save_states", False) and _split_backward(V)
        split = cfg.get("split", False) or n_seq * H * cdiv(V, BV) <= cfg.get("split_max_programs", 0)
        split = split or (keep and cfg.get("split_with_grad", False))
        segs = _segments(seqs, T, C, cu_seqlens) if split or (grad and _split_backward(V)) else None
        if split:
            hT = final_states(n_seq)
            lowp_states = lowp and not grad and LAUNCH["walk"].get("lowp_states", False)
            hbuf, _ = _walk(ke, v, dec, h0c, hT, seqs, H, K, V, C, lowp, lowp_states=lowp_states, segs=segs)
            if seqs[4]:
                BVc = min(cfg.get("BV_chunk", 64), next_pow2(V))
                kern._fwd_chunk[(seqs[4], H, cdiv(V, BVc))](
                    v, o, qe, A, hbuf, seqs[1], seqs[2], seqs[0], seqs[3], V,
                    H=H, K=K, C=C, BK=next_pow2(K), BV=BVc, LOWP=lowp, FAST=fast,
                    num_warps=cfg.get("chunk_warps", 4), num_stages=cfg.get("chunk_stages", 3),
                )  # fmt: skip
            if keep:
                saved_states = hbuf
            del hbuf
        else:
            # long sequences (LAUNCH["fwd"]["segment"]): the walk with outputs runs over segments of them in
            # parallel, each from the state entering it (found by a light walk of ends and a carry step);
            # each segment's end state is stored and a document's final state is its last segment's
            fsegs = _segments(seqs, T, C, cu_seqlens, "fwd")
            cu_f, coff_f, x0, n_f = seqs[0], seqs[3], h0c, n_seq
            if fsegs is not None:
                x0 = _segment_starts(ke, v, dec, h0c, seqs, fsegs, H, K, V, C, lowp)
                cu_f, coff_f, n_f = fsegs.cu, fsegs.coff, fsegs.n_seg
                BV, stages = _fused_block(cfg, fast, n_f * H, V)
            hT = final_states(n_f)
            kern._fwd[(cdiv(V, BV), n_f * H)](
                v, o, qe, ke, dec, A, x0 if x0 is not None else o, hT if want_final else o, cu_f, coff_f, V,
                H=H, K=K, C=C, BK=next_pow2(K), BV=BV, HAS_INIT=x0 is not None, STORE_FINAL=want_final, LOWP=lowp,
                FAST=fast, num_warps=cfg["num_warps"], num_stages=stages,
            )  # fmt: skip
            if fsegs is not None and want_final:
                hT = hT.index_select(0, fsegs.last)
        # the K-sized products are kept, not recomputed: ~0.75 KiB per token against a second _prep launch
        ctx.save_for_backward(q, k, v, gp, tp, h0c, qe, ke, dec, A, *seqs[:4], saved_states, hT)
        ctx.meta = (B, T, scale, eps, C, seqs[4:])
        ctx.segs = segs  # index tensors, no autograd history
        # an unused final state gets no gradient: autograd would otherwise hand backward a zero
        # [n_seq, H, K, V] float32 tensor (n_seq: cuda_graph_max_docs under graphs) to walk and reduce
        ctx.set_materialize_grads(False)
        return o.view(B, T, H, V), hT

    @staticmethod
    def backward(ctx, do, dhT):
        q, k, v, gp, tp, h0, qe, ke, dec, A, cu, chunk_seq, chunk_idx, coff, saved_states, hT = ctx.saved_tensors
        B, T, scale, eps, C, (n_slots, n_chunks) = ctx.meta
        TT, H, K = q.shape
        V = v.shape[-1]
        dev = q.device
        n_seq = cu.numel() - 1
        do = do.contiguous().view(TT, H, V) if do is not None else v.new_zeros(TT, H, V)
        dhT = dhT.contiguous() if dhT is not None else None
        f32 = dict(device=dev, dtype=torch.float32)
        dv = torch.empty_like(v)
        dh0 = torch.empty(n_seq, H, K, V, **f32) if h0 is not None else None
        lowp = v.dtype in _LOWP
        seqs = (cu, chunk_seq, chunk_idx, coff, n_slots, n_chunks)
        cfg = LAUNCH["bwd_state"]
        if _split_backward(V):
            if saved_states is None:
                hbuf, finp = _walk(ke, v, dec, h0, None, seqs, H, K, V, C, lowp, dhT=dhT, segs=ctx.segs)
            else:  # the forward's split walk kept them; the final-state term from its final state
                hbuf = saved_states
                finp = _final_term(dhT, hT)
            dsbuf, _ = _walk(qe, do, dec, dhT, dh0, seqs, H, K, V, C, lowp, reverse=True, segs=ctx.segs)
            # _bwd_chunk: n_part slices of NVB blocks of BVc columns; one partial per slice
            BVc = min(cfg.get("BV_chunk", 64), next_pow2(V))
            n_blocks = cdiv(V, BVc)
            NVB = cdiv(n_blocks, min(cfg.get("slices", 4), n_blocks))
            n_part = cdiv(n_blocks, NVB)
            dQp, dKp, dAp = _partials(n_part, TT, H, K, C, dev)
            if n_slots:
                kern._bwd_chunk[(n_slots, H, n_part)](
                    v, do, ke, A, hbuf, dsbuf, dv, dQp, dKp, dAp, chunk_seq, chunk_idx, cu, coff, V, TT, NVB,
                    H=H, K=K, C=C, BK=next_pow2(K), BV=BVc, LOWP=lowp, num_warps=cfg.get("chunk_warps", 4),
                    num_stages=cfg.get("chunk_stages", 3),
                )  # fmt: skip
            del hbuf, dsbuf
            if finp is None:
                finp = torch.zeros(1, n_seq * H, K, **f32)
        else:
            BV = min(cfg["BV"], next_pow2(V))
            n_part = cdiv(V, BV)
            hbuf = torch.empty(n_chunks, H, K, V, **f32)
            dQp, dKp, dAp = _partials(n_part, TT, H, K, C, dev)
            finp = torch.zeros(n_part, n_seq * H, K, **f32)
            kern._bwd_state[(n_part, n_seq * H)](
                v, do, qe, ke, dec, A, h0 if h0 is not None else hbuf, dhT if dhT is not None else hbuf, hbuf, dv,
                dh0 if dh0 is not None else hbuf, dQp, dKp, dAp, finp, cu, coff, V, TT,
                H=H, K=K, C=C, BK=next_pow2(K), BV=BV, HAS_INIT=h0 is not None, HAS_DHT=dhT is not None, LOWP=lowp,
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            )  # fmt: skip
            del hbuf
        dq = torch.empty(TT, H, K, device=dev, dtype=q.dtype)
        dk = torch.empty(TT, H, K, device=dev, dtype=k.dtype)
        dkh, db, dgb, dtb = (torch.empty(TT, H, K, **f32) for _ in range(4))
        BKS = min(LAUNCH["intra"]["BK"], next_pow2(K))
        NKS = cdiv(K, BKS)
        if n_slots:
            kern._bwd_intra[(n_slots * NKS, H)](
                q, k, gp, tp, dQp, dKp, dAp, dq, dkh, db, dgb, dtb, chunk_seq, chunk_idx, cu, q.stride(0),
                gp.stride(0), scale, eps, n_part, TT, H=H, K=K, C=C, BKS=BKS, NKS=NKS,
                num_warps=LAUNCH["intra"]["num_warps"],
            )  # fmt: skip
        # d log alpha_t = sum over later tokens of the same sequence (+ the final-state term), then the links
        dgp = torch.empty(TT, H, K, device=dev, dtype=gp.dtype)
        dtp = torch.empty(TT, H, K, device=dev, dtype=tp.dtype)
        if n_slots:
            tot = torch.empty(n_chunks, H, K, **f32)
            consts = dict(H=H, K=K, C=C, BK=next_pow2(K))
            kern._chunk_totals[(n_slots, H)](
                db, tot, k, dkh, dk, chunk_seq, chunk_idx, cu, coff, q.stride(0), eps, **consts
            )  # fmt: skip
            kern._bwd_gates[(n_slots, H)](
                gp, tp, db, dgb, dtb, tot, finp, dgp, dtp, chunk_seq, chunk_idx, cu, coff, finp.shape[0], n_seq * H,
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
            None,
            None,
        )


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
    chunk_size: int | None = None,
    output_final_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused chunked DDTS (Triton); arguments and results as :func:`rodimus.ops.ddts.ddts_chunk`.

    ``output_final_state=False`` (training) neither stores the final state nor keeps it for backward:
    [N, H, K, V] float32 per layer, N being ``cuda_graph_max_docs`` under CUDA graphs.

    ``chunk_size`` is rounded up to a power of two in [16, 128] for the kernel's tiles; None takes
    ``DEFAULT_CHUNK`` (64: fwd+bwd 2.26 ms vs 3.29 at 32 on the H200, B8 T2048 V4096). Float64
    inputs (gradcheck) go to the torch chunk form. A single token without autograd goes to the
    decode kernel.
    """
    check_ddts_inputs(q, k, v, g_pre, tau_pre, initial_state, cu_seqlens)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
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
            output_final_state=output_final_state,
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
        o = ddts_decode_(q, k, v, g_pre, tau_pre, state, scale=scale, eps=eps)
        return o, state if output_final_state else None
    # passed in: needs_input_grad inside forward ignores torch.no_grad, so a no-grad call on leaves that
    # require grad would take the training path (float32 products, stored states)
    return _DDTSFunction.apply(
        q, k, v, g_pre, tau_pre, initial_state, cu_seqlens, scale, float(eps),
        _kernel_chunk(DEFAULT_CHUNK if chunk_size is None else chunk_size), bool(output_final_state), needs_grad,
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
    kern._decode[(cdiv(V, BV), B * H)](
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
