"""The Triton DDTS kernels (under the interpreter on CPU) against the float64 sequential reference."""

from __future__ import annotations

import inspect

import pytest
import torch

pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e .[triton])")

from rodimus.ops import dispatch  # noqa: E402
from rodimus.ops.ddts import ddts_chunk, ddts_naive  # noqa: E402
from rodimus.ops.triton import ddts_decode_, ddts_triton  # noqa: E402
from tests.helpers import assert_close, run_benchmark  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # compiled kernels on a GPU, else the interpreter
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
CASES = [  # B, T, H, K, V, dtype, initial_state, cu_seqlens, chunk_size
    pytest.param(2, 63, 1, 16, 60, torch.float32, True, None, 32, id="B2-T63-H1-K16-V60-fp32-init"),
    pytest.param(1, 1, 2, 16, 20, torch.float32, True, None, 32, id="B1-T1-H2-K16-V20-fp32-init"),
    pytest.param(1, 130, 1, 16, 24, torch.float32, False, None, 64, id="B1-T130-H1-K16-V24-C64-fp32"),
    pytest.param(1, 40, 3, 12, 130, torch.float32, True, None, 16, id="B1-T40-H3-K12-V130-C16-fp32-init"),
    pytest.param(1, 90, 2, 16, 24, torch.float32, False, [0, 7, 7, 50, 90], 32, id="packed4-T90-H2-fp32"),
    pytest.param(2, 63, 2, 16, 60, torch.bfloat16, True, None, 32, id="B2-T63-H2-K16-V60-bf16-init"),
    pytest.param(1, 70, 1, 16, 32, torch.bfloat16, False, [0, 33, 70], 32, id="packed2-T70-H1-bf16"),
    # a document of 18 chunks: the d(log-decay) carry sums later chunk totals in blocks of 16
    pytest.param(1, 300, 1, 16, 16, torch.float32, False, [0, 280, 300], 16, id="packed2-T300-C16-fp32"),
]


def _inputs(B, T, H, K, V, dtype, n_state, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
        return x.to(DEV, dtype).requires_grad_()

    xs = (r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), r(B, T, H, K, scale=2.0), r(B, T, H, K))
    h0 = (
        torch.randn(n_state, H, K, V, generator=g, dtype=torch.float64)
        .to(DEV, torch.float32)
        .requires_grad_()
    )
    return xs, h0


def _close(name, actual, expected, *, rel):
    assert_close(name, actual.detach().cpu(), expected.detach().cpu(), rel=rel)


@pytest.mark.parametrize("B,T,H,K,V,dtype,init,cu,chunk", CASES)
def test_forward_and_every_gradient(B, T, H, K, V, dtype, init, cu, chunk, monkeypatch):
    """The fused walks (the split forms, which small grids would pick, have their own test)."""
    from rodimus.ops.triton import ddts as tri

    monkeypatch.setitem(tri.LAUNCH, "fwd", dict(tri.LAUNCH["fwd"], split_max_programs=0))
    monkeypatch.setitem(tri.LAUNCH, "bwd_state", dict(tri.LAUNCH["bwd_state"], split=False))
    _check(B, T, H, K, V, dtype, init, cu, chunk)


def _check(B, T, H, K, V, dtype, init, cu, chunk, strong_from=None, grads=True, loose=(), final=True):
    """strong_from: tokens from there on get g_pre + 40 (decay e^-20 or so per token, far past the
    one-dot form's range in _prep); earlier ones g_pre - 8 (almost none). final=False: no final state
    asked for (training), the output's gradient only."""
    cu = torch.tensor(cu) if cu is not None else None
    n = B if cu is None else len(cu) - 1
    xs, h0 = _inputs(B, T, H, K, V, dtype, n)
    if strong_from is not None:
        with torch.no_grad():
            xs[3][:, :strong_from] -= 8.0
            xs[3][:, strong_from:] += 40.0
            decay = torch.nn.functional.softplus(xs[3].double()) * torch.sigmoid(xs[4].double())
            assert decay[:, strong_from : strong_from + 16].sum(1).max() > 80  # the fallback is taken
    h0 = h0 if init else None
    o, hT = ddts_triton(
        *xs, initial_state=h0, cu_seqlens=cu.to(DEV) if cu is not None else None, chunk_size=chunk,
        output_final_state=final,
    )
    g = torch.Generator().manual_seed(1)
    do = torch.randn(o.shape, generator=g, dtype=torch.float64)
    ref_in = [x.detach().cpu().double().requires_grad_() for x in xs]
    ref_h0 = h0.detach().cpu().double().requires_grad_() if init else None
    o_ref, hT_ref = ddts_naive(*ref_in, initial_state=ref_h0, cu_seqlens=cu)
    if final:
        dh = torch.randn(hT.shape, generator=g, dtype=torch.float64)
        torch.autograd.backward([o, hT], [do.to(DEV, o.dtype), dh.to(DEV, torch.float32)])
        torch.autograd.backward([o_ref, hT_ref], [do, dh])
    else:
        assert hT is None
        o.backward(do.to(DEV, o.dtype))
        o_ref.backward(do)
    tol = TOL[dtype]
    assert o.dtype == dtype
    _close("o", o, o_ref, rel=tol)
    if final:
        assert hT.dtype == torch.float32
        _close("final_state", hT, hT_ref, rel=tol)
    if not grads:
        return
    for name, x, xr in zip(("dq", "dk", "dv", "dg_pre", "dtau_pre"), xs, ref_in, strict=True):
        _close(name, x.grad, xr.grad, rel=10 * tol if name in loose else tol)
    if init:
        _close("dinitial_state", h0.grad, ref_h0.grad, rel=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cu", [None, [0, 30, 100]], ids=["batched", "packed"])
def test_mild_and_strong_decay_chunks(dtype, cu):
    """Chunks that _prep scores with one dot per sub-chunk and chunks whose decay needs the exponent-free
    fallback, in one call. At such decays the g_pre gradient is less accurate than the rest, as it was
    before the one-dot form: bf16 1.9-2.6e-2 (outputs only are checked), float32 on an H100 (its
    approximate exp and log) dg_pre 2.7-3.1e-4 and dtau_pre 1.4e-4, so 1e-3 is allowed for those two."""
    B = 2 if cu is None else 1
    _check(B, 100, 2, 16, 24, dtype, cu is None, cu, 32, strong_from=40, grads=dtype == torch.float32,
           loose=("dg_pre", "dtau_pre"))  # fmt: skip


def _use_split_forms(monkeypatch, bwd_bv_chunk, slices, save, **walk):
    """Force the split forward and backward (LAUNCH[...]["split"]) with small tiles, and `walk` settings.
    save: the forward keeps its states in float32 (bf16 inputs then take float32 products); otherwise bf16
    inputs take bf16 products for the output and the backward walks the states again."""
    from rodimus.ops.triton import ddts as tri

    cfg = dict(tri.LAUNCH["bwd_state"], split=True, split_min_v=0, BV_chunk=bwd_bv_chunk, slices=slices)
    monkeypatch.setitem(tri.LAUNCH, "bwd_state", cfg)
    fwd = dict(tri.LAUNCH["fwd"], split=True, BV_chunk=32, save_states=save, lowp_with_grad=not save)
    monkeypatch.setitem(tri.LAUNCH, "fwd", fwd)
    monkeypatch.setitem(tri.LAUNCH, "walk", dict(tri.LAUNCH["walk"], BV=32, **walk))


SPLIT_FORMS = [  # slices of _bwd_chunk, _walk's K block, forward states kept for the backward
    pytest.param(1, 16, False, id="slices1-BK16"),
    pytest.param(3, 32, True, id="slices3-BK32-saved"),
]


@pytest.mark.parametrize("slices,walk_bk,save", SPLIT_FORMS)
@pytest.mark.parametrize("B,T,H,K,V,dtype,init,cu,chunk", [CASES[0], CASES[3], CASES[4], CASES[6]])
def test_split_walks(B, T, H, K, V, dtype, init, cu, chunk, slices, walk_bk, save, monkeypatch):
    """The chunk-parallel forms (LAUNCH[...]["split"]) meet the same tolerances, forward and gradients."""
    _use_split_forms(monkeypatch, 16, slices, save, BK=walk_bk)
    _check(B, T, H, K, V, dtype, init, cu, chunk)


@pytest.mark.parametrize("split_bwd", [False, True], ids=["fused-bwd", "split-bwd"])
@pytest.mark.parametrize("B,T,H,K,V,dtype,init,cu,chunk", [CASES[5], CASES[6]])
def test_bf16_products_with_grad(B, T, H, K, V, dtype, init, cu, chunk, split_bwd, monkeypatch):
    """LAUNCH["fwd"]["lowp_with_grad"]: a training forward through the fused walk with bf16 dots keeps no
    states, so the backward (fused, or split: walking the states again) must rebuild them exactly."""
    from rodimus.ops.triton import ddts as tri

    fwd = dict(tri.LAUNCH["fwd"], split_max_programs=0, lowp_products=True, lowp_with_grad=True, fast_min_BV=16)
    monkeypatch.setitem(tri.LAUNCH, "fwd", fwd)
    bwd = dict(tri.LAUNCH["bwd_state"], split=split_bwd, split_min_v=0, BV_chunk=16)
    monkeypatch.setitem(tri.LAUNCH, "bwd_state", bwd)
    monkeypatch.setitem(tri.LAUNCH, "walk", dict(tri.LAUNCH["walk"], BV=32))
    _check(B, T, H, K, V, dtype, init, cu, chunk)


def _use_fused_segments(monkeypatch, segment, **walk):
    """Force the fused forward walk over segments of `segment` chunks (LAUNCH["fwd"]["segment"]), and `walk`
    settings."""
    from rodimus.ops.triton import ddts as tri

    fwd = dict(tri.LAUNCH["fwd"], split_max_programs=0, segment=segment, segment_min_chunks=0, fast_min_BV=16)
    monkeypatch.setitem(tri.LAUNCH, "fwd", fwd)
    monkeypatch.setitem(tri.LAUNCH, "walk", dict(tri.LAUNCH["walk"], BV=32, **walk))


FWD_SEGMENTS = [  # the fused forward walk over segments of documents (LAUNCH["fwd"]["segment"])
    pytest.param(*CASES[0].values, 1, id="B2-T63-init-seg1-fp32"),
    pytest.param(*CASES[4].values, 1, id="packed4-seg1-fp32"),
    pytest.param(*CASES[7].values, 3, id="packed2-T300-C16-seg3-fp32"),
    pytest.param(*CASES[5].values, 1, id="B2-T63-init-seg1-bf16"),
    pytest.param(*CASES[6].values, 1, id="packed2-seg1-bf16"),
]


@pytest.mark.parametrize("B,T,H,K,V,dtype,init,cu,chunk,segment", FWD_SEGMENTS)
@pytest.mark.parametrize("final", [False, True], ids=["no-final", "final"])
def test_fused_forward_over_segments(B, T, H, K, V, dtype, init, cu, chunk, segment, final, monkeypatch):
    """The fused forward may walk segments of each document in parallel, each from the state entering it:
    outputs, final states and gradients as the reference, with and without gradients (bf16 with bf16
    products), initial states, empty and multi-segment documents."""
    from rodimus.ops.triton import ddts as tri

    _use_fused_segments(monkeypatch, segment)
    calls = []
    starts = tri._segment_starts
    monkeypatch.setattr(tri, "_segment_starts", lambda *a, **kw: calls.append(1) or starts(*a, **kw))
    _check(B, T, H, K, V, dtype, init, cu, chunk, final=final)
    xs, h0 = _inputs(B, T, H, K, V, dtype, B if cu is None else len(cu) - 1)
    cu_t = torch.tensor(cu) if cu is not None else None
    with torch.no_grad():
        o, hT = ddts_triton(*xs, initial_state=h0 if init else None, cu_seqlens=cu_t.to(DEV) if cu else None,
                            chunk_size=chunk, output_final_state=final)  # fmt: skip
    o_ref, hT_ref = ddts_naive(*[x.detach().cpu().double() for x in xs], cu_seqlens=cu_t,
                               initial_state=h0.detach().cpu().double() if init else None)  # fmt: skip
    _close("o without grad", o, o_ref, rel=TOL[dtype])
    if final:
        _close("final state without grad", hT, hT_ref, rel=TOL[dtype])
    assert len(calls) == 2  # both forwards took the segments


KEY_SLICES = [  # the backward's per-column kernel over several programs of 16 key columns (the last partial)
    pytest.param(1, 50, 2, 40, 24, torch.float32, False, [0, 20, 20, 50], 16, id="packed3-K40-fp32"),
    pytest.param(2, 21, 1, 40, 24, torch.float32, True, None, 16, id="B2-K40-fp32-init"),
    pytest.param(2, 37, 1, 48, 20, torch.bfloat16, False, None, 32, id="B2-T37-K48-bf16"),
]


@pytest.mark.parametrize("B,T,H,K,V,dtype,init,cu,chunk", KEY_SLICES)
def test_key_column_slices(B, T, H, K, V, dtype, init, cu, chunk, monkeypatch):
    """Outputs and gradients are the same when ``_prep`` walks K in slices of 16 and ``_bwd_intra`` splits
    K over programs (the key norm's backward then runs in ``_chunk_totals`` over all columns)."""
    from rodimus.ops.triton import ddts as tri

    monkeypatch.setitem(tri.LAUNCH, "intra", dict(tri.LAUNCH["intra"], BK=16))
    monkeypatch.setitem(tri.LAUNCH, "prep", dict(tri.LAUNCH["prep"], BK=16))
    _check(B, T, H, K, V, dtype, init, cu, chunk)


SEGMENTED = [  # chunks per segment, forward states kept for the backward
    pytest.param(1, False, id="seg1"),
    pytest.param(3, True, id="seg3-saved"),
]


@pytest.mark.parametrize("segment,save", SEGMENTED)
@pytest.mark.parametrize("B,T,H,K,V,dtype,init,cu,chunk", [CASES[0], CASES[2], CASES[4], CASES[6], CASES[7]])
def test_segmented_walks(B, T, H, K, V, dtype, init, cu, chunk, segment, save, monkeypatch):
    """Walks over segments of the documents (local pass, carry, seeded pass) match the reference, including
    empty documents, documents of one segment and the initial/final states."""
    _use_split_forms(monkeypatch, 32, 2, save, BK=16, segment=segment, segment_min_chunks=0)
    _check(B, T, H, K, V, dtype, init, cu, chunk)


GEMM_ENDS = [  # plain batches whose T is a multiple of the segment: the segments' ends as one batched GEMM
    pytest.param(2, 128, 1, 16, 40, torch.float32, True, None, 32, 1, id="B2-T128-C32-seg1-fp32-init"),
    pytest.param(2, 128, 2, 16, 24, torch.bfloat16, False, None, 16, 2, id="B2-T128-H2-C16-seg2-bf16"),
    # four chunks a segment: each chunk's weight is a product of several later (earlier) decays
    pytest.param(2, 128, 1, 16, 24, torch.float32, True, None, 16, 4, id="B2-T128-C16-seg4-fp32-init"),
]


@pytest.mark.parametrize("where", ["fused-forward", "split-walks"])
@pytest.mark.parametrize("B,T,H,K,V,dtype,init,cu,chunk,segment", GEMM_ENDS)
def test_segment_ends_as_one_gemm(B, T, H, K, V, dtype, init, cu, chunk, segment, where, monkeypatch):
    """LAUNCH["walk"]["starts_gemm"]: the segments' entering states from the per-chunk-scaled products (one
    batched GEMM, then the carry), for the fused forward over segments and for the segmented walks (the
    reverse dS walk too)."""
    from rodimus.ops.triton import ddts as tri

    if where == "fused-forward":
        _use_fused_segments(monkeypatch, segment, starts_gemm=True)
    else:
        _use_split_forms(monkeypatch, 32, 2, False, BK=16, segment=segment, segment_min_chunks=0, starts_gemm=True)
    reverse = []  # of each call of the GEMM form
    gemm = tri._segment_ends_gemm
    monkeypatch.setattr(tri, "_segment_ends_gemm", lambda *a: reverse.append(a[-1]) or gemm(*a))
    _check(B, T, H, K, V, dtype, init, cu, chunk)
    # the fused forward's segments, or both walks of the split forms (forward states, reverse dS)
    assert set(reverse) == ({False} if where == "fused-forward" else {False, True})


@pytest.mark.parametrize("used", ["output", "final_state"])
@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
def test_one_output_used(used, split, monkeypatch):
    """Only o (training) or only the final state carries a gradient: backward gets None for the other
    (no zero tensor materialised) and the gradients still match the reference."""
    if split:
        _use_split_forms(monkeypatch, 16, 2, True, BK=16)
    cu = torch.tensor([0, 40, 40, 90])
    xs, h0 = _inputs(1, 90, 1, 16, 24, torch.float32, 3)
    o, hT = ddts_triton(*xs, cu_seqlens=cu.to(DEV), chunk_size=32)
    ref_in = [x.detach().cpu().double().requires_grad_() for x in xs]
    o_ref, hT_ref = ddts_naive(*ref_in, cu_seqlens=cu)
    g = torch.Generator().manual_seed(2)
    out, ref = (o, o_ref) if used == "output" else (hT, hT_ref)
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (out * w.to(DEV, out.dtype)).sum().backward()
    (ref * w).sum().backward()
    for name, x, xr in zip(("dq", "dk", "dv", "dg_pre", "dtau_pre"), xs, ref_in, strict=True):
        expected = xr.grad if xr.grad is not None else torch.zeros_like(xr)  # q does not reach the state
        _close(name, x.grad, expected, rel=TOL[torch.float32])


@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
@pytest.mark.parametrize("packed", [False, True], ids=["batch", "packed"])
def test_no_final_state(split, packed, monkeypatch):
    """output_final_state=False returns None for the state (the kernels skip storing it) and the same
    output and gradients as a call that keeps it."""
    if split:
        _use_split_forms(monkeypatch, 16, 2, True, BK=16)
    cu = torch.tensor([0, 40, 40, 90]).to(DEV) if packed else None
    xs, h0 = _inputs(1 if packed else 2, 90, 1, 16, 24, torch.float32, 2)
    h0 = None if packed else h0
    w = torch.randn(xs[2].shape, generator=torch.Generator().manual_seed(4)).to(DEV)
    results = []
    for want in (True, False):
        leaves = [t for t in (*xs, h0) if t is not None]
        for t in leaves:
            t.grad = None
        o, hT = ddts_triton(*xs, initial_state=h0, cu_seqlens=cu, chunk_size=32, output_final_state=want)
        assert (hT is None) == (not want)
        (o * w).sum().backward()
        results.append((o.detach(), [t.grad.clone() for t in leaves]))
    (o1, g1), (o2, g2) = results
    _close("o", o2, o1, rel=1e-6)
    assert len(g1) == len(g2) == 5 + (h0 is not None)
    for name, a, b in zip(("dq", "dk", "dv", "dg_pre", "dtau_pre", "dh0"), g1, g2, strict=False):
        _close(name, b, a, rel=1e-6)


def test_segment_table():
    """Segments tile each document in order, at most `segment` chunks each, and mark both ends."""
    from rodimus.ops.triton import ddts as tri

    cu = torch.tensor([0, 7, 7, 200, 230])
    C, seg = 16, 3
    seqs = tri._sequences(cu, 1, 230, C, "cpu")
    table = tri._segment_table(seqs, C, seg)
    scu, scoff, fin_fwd, fin_rev, first = table.cu, table.coff, table.fin_fwd, table.fin_rev, table.first
    docs = []
    for d in range(4):
        ids = range(int(first[d]), int(first[d + 1]))
        assert int(scu[ids[0]]) == int(cu[d]) and int(scu[ids[-1] + 1]) == int(cu[d + 1])
        for i in ids:
            assert int(scu[i + 1]) - int(scu[i]) <= seg * C
            assert int(scoff[i]) == int(seqs[3][d]) + (i - ids[0]) * seg
        assert [int(fin_fwd[i]) for i in ids] == [-1] * (len(ids) - 1) + [d]
        assert [int(fin_rev[i]) for i in ids] == [d] + [-1] * (len(ids) - 1)
        assert int(table.last[d]) == ids[-1]
        docs.append(len(ids))
    assert docs == [1, 1, 5, 1]
    spare = range(int(first[4]), table.n_seg)
    assert all(int(scu[i]) == 230 and int(fin_fwd[i]) == -1 == int(fin_rev[i]) for i in spare)


def test_fused_block_fills_the_grid():
    """bf16 products halve the fused walk's V block until the grid has its programs (not below the floor),
    and a halved block takes its own stage count; float32 products keep the block and the plain stages."""
    from rodimus.ops.triton import ddts as tri

    cfg = dict(BV=128, num_stages=1, fast_stages=2, fast_stages_halved=3, fast_min_BV=32, fast_min_programs=256)
    assert tri._fused_block(cfg, True, 8, 4096) == (128, 2)  # 8 x 32 blocks: full already
    assert tri._fused_block(cfg, True, 4, 4096) == (64, 3)
    assert tri._fused_block(cfg, True, 2, 4096) == (32, 3)
    assert tri._fused_block(cfg, True, 1, 4096) == (32, 3)  # the floor, though 128 programs
    assert tri._fused_block(cfg, False, 1, 4096) == (128, 1)
    assert tri._fused_block(cfg, True, 1, 100) == (32, 3)  # blocks of a short V start at its power of two
    no_halved = {k: v for k, v in cfg.items() if k != "fast_stages_halved"}
    assert tri._fused_block(no_halved, True, 2, 4096) == (32, 2)


@pytest.mark.parametrize(
    "split,lowp_states,lowp_products",
    [(True, False, False), (True, True, False), (True, True, True), (False, False, False), (False, False, True)],
    ids=["split-fp32", "split-bf16-states", "split-bf16-all", "fused-fp32", "fused-bf16-products"],
)
@pytest.mark.parametrize("cu", [None, [0, 9, 9, 75, 140]], ids=["batched", "packed"])
def test_forward_without_grad(split, lowp_states, lowp_products, cu, monkeypatch):
    """Inference (bf16 states and bf16 qe / ke / A with bf16 dots allowed there) matches the reference."""
    from rodimus.ops.triton import ddts as tri

    split_cfg = dict(split=split, split_max_programs=0, BV_chunk=32, lowp_products=lowp_products)
    monkeypatch.setitem(tri.LAUNCH, "fwd", dict(tri.LAUNCH["fwd"], **split_cfg))
    monkeypatch.setitem(tri.LAUNCH, "walk", dict(tri.LAUNCH["walk"], BK=16, BV=32, lowp_states=lowp_states))
    B, T = (2, 70) if cu is None else (1, 140)
    n_state = B if cu is None else len(cu) - 1
    xs, h0 = _inputs(B, T, 2, 16, 40, torch.bfloat16, n_state)
    h0 = h0 if cu is None else None  # packed documents start from zeros
    cu_t = None if cu is None else torch.tensor(cu, device=DEV)
    with torch.no_grad():
        o, hT = ddts_triton(*xs, initial_state=h0, cu_seqlens=cu_t, chunk_size=32)
    ref = [x.detach().cpu().double() for x in xs]
    h0_ref = None if h0 is None else h0.detach().cpu().double()
    o_ref, hT_ref = ddts_naive(*ref, initial_state=h0_ref, cu_seqlens=None if cu is None else torch.tensor(cu))
    _close("o", o, o_ref, rel=TOL[torch.bfloat16])
    _close("final_state", hT, hT_ref, rel=TOL[torch.bfloat16])


def test_packed_documents_do_not_leak():
    """Changing one document's tokens leaves every other document's outputs bit-identical."""
    cu = torch.tensor([0, 20, 45, 60])
    (q, k, v, gp, tp), _ = _inputs(1, 60, 2, 16, 16, torch.float32, 3)
    cu = cu.to(DEV)
    o1, s1 = ddts_triton(q, k, v, gp, tp, cu_seqlens=cu)
    v2 = v.detach().clone()
    v2[:, 20:45] += 5.0
    o2, s2 = ddts_triton(q, k, v2, gp, tp, cu_seqlens=cu)
    keep = torch.cat([torch.arange(0, 20), torch.arange(45, 60)]).to(DEV)
    assert torch.equal(o1[:, keep], o2[:, keep])
    assert torch.equal(s1[[0, 2]], s2[[0, 2]])
    assert not torch.equal(o1[:, 20:45], o2[:, 20:45])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decode_kernel_steps_match_reference(dtype):
    B, T, H, K, V = 3, 5, 2, 16, 40
    xs, h0 = _inputs(B, T, H, K, V, dtype, B)
    xs = [x.detach() for x in xs]
    o_ref, s_ref = ddts_naive(*[x.cpu().double() for x in xs], initial_state=h0.detach().cpu().double())
    state = h0.detach().clone()
    outs = []
    for t in range(T):
        step = [x[:, t : t + 1] for x in xs]
        if t % 2:  # the registered functional op (T = 1, no grad) takes the decode kernel too
            o_t, state = ddts_triton(*step, initial_state=state)
        else:
            o_t = ddts_decode_(*step, state)
        outs.append(o_t)
    _close("o", torch.cat(outs, 1), o_ref, rel=TOL[dtype])
    _close("state", state, s_ref, rel=TOL[dtype])


def test_registered_with_the_torch_signature():
    assert dispatch.triton_available()
    assert dispatch.REGISTRY["ddts"]["triton"] is ddts_triton
    assert inspect.signature(ddts_triton) == inspect.signature(ddts_chunk)


@pytest.mark.parametrize("H", [1, 2])
def test_column_slices_are_read_in_place(H):
    """q, k (and g_pre, tau_pre) as column slices of wider projections, as the mixer passes them, give the
    same outputs and gradients as contiguous copies."""
    B, T, K, V = 2, 37, 16, 24
    g = torch.Generator().manual_seed(7)
    qk = torch.randn(B, T, H * 2 * K + 8, generator=g).to(DEV).requires_grad_()  # 8 spare columns
    gt = torch.randn(B, T, H * 2 * K, generator=g).to(DEV).requires_grad_()
    v = torch.randn(B, T, H, V, generator=g).to(DEV).requires_grad_()
    do = torch.randn(B, T, H, V, generator=g).to(DEV)

    def run(copy):
        q, k = (t.reshape(B, T, H, K) for t in qk[..., : 2 * H * K].split(H * K, dim=-1))
        gp, tp = (t.reshape(B, T, H, K) for t in gt.split(H * K, dim=-1))
        ins = [q, k, v, gp, tp]
        if copy:
            ins = [t.contiguous() for t in ins]
        else:
            assert not q.is_contiguous() and not gp.is_contiguous()
        o, _ = ddts_triton(*ins, chunk_size=16)
        return [o, *torch.autograd.grad(o, (qk, gt, v), do)]

    for name, a, b in zip(("o", "d qk", "d gates", "dv"), run(False), run(True), strict=True):
        _close(name, a, b, rel=1e-6)


def test_forward_benchmark_runs():
    """benchmarks/ddts_forward.py (the no-grad forward against its floor, per launch setting) runs, and
    reports each variant's distance from the default (here a segmented forward with the GEMM form)."""
    segments = '{"fwd": {"segment": 1, "segment_min_chunks": 0}, "walk": {"starts_gemm": true}}'
    out = run_benchmark("ddts_forward.py", "--smoke", f'[{{}}, {{"prep": {{"BK": 16}}}}, {segments}]')
    assert out.count("_prep alone") == 2 and out.count("floor") == 3, out
    rows = [line for line in out.splitlines() if "floor" in line]
    errs = [float(line.split(" from the default")[0].rsplit(", ", 1)[1]) for line in rows]
    assert errs[0] == 0 and max(errs) < 1e-2, out


def test_backward_benchmark_runs():
    """benchmarks/ddts_forward.py --backward (forward+backward per launch setting) runs, and reports each
    variant's gradients against the default's (here the split forward and segmented walks)."""
    variants = '[{}, {"fwd": {"split": true}, "walk": {"segment": 1, "segment_min_chunks": 0}}]'
    out = run_benchmark("ddts_forward.py", "--smoke", "--backward", variants)
    rows = [line for line in out.splitlines() if "fwd+bwd" in line]
    errs = [float(line.split("gradients ")[1].split(" from")[0]) for line in rows]
    assert len(errs) == 2 and errs[0] == 0 and errs[1] < 1e-2, out
