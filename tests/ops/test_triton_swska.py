"""The Triton SW-SKA kernels (under the interpreter on CPU) against the float64 reference."""

from __future__ import annotations

import inspect

import pytest
import torch

pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e .[triton])")

from rodimus.ops import dispatch  # noqa: E402
from rodimus.ops.swska import swska_blocked, swska_naive  # noqa: E402
from rodimus.ops.triton import swska_triton  # noqa: E402
from tests.helpers import assert_close, run_benchmark  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # compiled kernels on a GPU, else the interpreter
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
CASES = [  # B, T, S, H, D, Dv, window, dtype, key_mask, cu_seqlens
    pytest.param(2, 70, 70, 2, 16, 24, 20, torch.float32, False, None, id="B2-T70-H2-D16-W20-fp32"),
    pytest.param(1, 50, 80, 3, 16, 16, 7, torch.float32, True, None, id="B1-T50-S80-H3-W7-keymask-fp32"),
    pytest.param(1, 1, 40, 2, 16, 16, 15, torch.float32, True, None, id="decode-T1-S40-H2-W15-keymask-fp32"),
    pytest.param(
        1, 90, 90, 2, 16, 16, 30, torch.float32, False, [0, 10, 10, 60, 90], id="packed4-T90-W30-fp32"
    ),
    pytest.param(1, 33, 33, 1, 16, 16, 1, torch.float32, False, None, id="B1-T33-H1-W1-fp32"),
    pytest.param(2, 70, 70, 4, 32, 32, 20, torch.bfloat16, True, None, id="B2-T70-H4-D32-W20-keymask-bf16"),
]
# 16-row tiles against windows of several tiles: most tile pairs are then interior (no mask built), and
# the edges of the band, of documents and of T cut the rest
SMALL_TILES = [
    pytest.param(2, 100, 100, 2, 16, 16, 40, torch.float32, False, None, id="B2-T100-W40-fp32"),
    pytest.param(1, 50, 120, 2, 16, 16, 50, torch.float32, False, None, id="B1-T50-S120-W50-fp32"),
    pytest.param(
        1, 120, 120, 2, 16, 16, 37, torch.float32, False, [0, 7, 55, 55, 120], id="packed-T120-W37-fp32"
    ),
    pytest.param(  # a document ends inside the window of a key tile wholly within it
        1, 130, 130, 1, 16, 16, 60, torch.float32, False, [0, 40, 40, 97, 130], id="packed-T130-W60-fp32"
    ),
    pytest.param(1, 97, 97, 3, 32, 32, 60, torch.bfloat16, False, [0, 97], id="packed1-T97-W60-bf16"),
]


def _close(name, actual, expected, *, rel):
    assert_close(name, actual.detach().cpu(), expected.detach().cpu(), rel=rel)


@pytest.mark.parametrize("B,T,S,H,D,DV,W,dtype,km,cu", CASES)
def test_forward_and_every_gradient(B, T, S, H, D, DV, W, dtype, km, cu):
    _check(B, T, S, H, D, DV, W, dtype, km, cu)


@pytest.mark.parametrize("B,T,S,H,D,DV,W,dtype,km,cu", SMALL_TILES)
def test_interior_tiles(monkeypatch, B, T, S, H, D, DV, W, dtype, km, cu):
    from rodimus.ops.triton import swska as tri

    tiles = {name: dict(cfg, BM=16, BN=16) for name, cfg in tri.LAUNCH.items()}
    tiles["dkdv"]["BN"] = 32  # key tiles wider than query tiles: their bounds are found separately
    monkeypatch.setattr(tri, "LAUNCH", tiles)
    _check(B, T, S, H, D, DV, W, dtype, km, cu)


def _check(B, T, S, H, D, DV, W, dtype, km, cu):
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEV, dtype).requires_grad_()

    q, k, v = r(B, T, H, D), r(B, S, D), r(B, S, H, DV)
    mask = torch.rand(B, S, generator=g) > 0.3 if km else None
    cu = torch.tensor(cu) if cu is not None else None
    o = swska_triton(
        q,
        k,
        v,
        window=W,
        key_mask=mask.to(DEV) if km else None,
        cu_seqlens=cu.to(DEV) if cu is not None else None,
    )
    do = torch.randn(o.shape, generator=g, dtype=torch.float64)
    o.backward(do.to(DEV, dtype))
    ref = [x.detach().cpu().double().requires_grad_() for x in (q, k, v)]
    o_ref = swska_naive(*ref, window=W, key_mask=mask, cu_seqlens=cu)
    o_ref.backward(do)
    tol = TOL[dtype]
    assert o.dtype == dtype
    _close("o", o, o_ref, rel=tol)
    for name, x, xr in zip(("dq", "dk", "dv"), (q, k, v), ref, strict=True):
        _close(name, x.grad, xr.grad, rel=tol)


DECODE_CASES = [  # B, S, H, D, Dv, window, dtype, key_mask, (BN, min_span): spans of the cache per program
    pytest.param(2, 70, 3, 16, 24, 20, torch.float32, False, (16, 16), id="B2-S70-W20-spans-fp32"),
    pytest.param(3, 100, 2, 16, 20, 200, torch.float32, True, (16, 32), id="B3-S100-Wall-keymask-spans-fp32"),
    pytest.param(1, 1, 2, 16, 16, 4, torch.float32, False, None, id="B1-S1-fp32"),
    pytest.param(2, 90, 4, 32, 32, 63, torch.bfloat16, True, None, id="B2-S90-W63-keymask-bf16"),
    pytest.param(2, 130, 2, 16, 16, 129, torch.bfloat16, False, (16, 16), id="B2-S130-spans-bf16"),
    pytest.param(9, 40, 8, 16, 16, 64, torch.bfloat16, False, None, id="B9-H8-many-rows-bf16"),  # the wide dot tile
]


@pytest.mark.parametrize("dot", [False, True], ids=["row-sums", "dots"])
@pytest.mark.parametrize("B,S,H,D,DV,W,dtype,km,spans", DECODE_CASES)
def test_decode_step(monkeypatch, B, S, H, D, DV, W, dtype, km, spans, dot):
    """One token against a cache without autograd (the split-over-keys decode kernels, with row sums or
    padded dots): values given as the cache's [B, H, S, Dv] buffer transposed (not copied), a batch row with
    every key masked gives zeros."""
    from rodimus.ops.triton import swska as tri

    cfg = dict(tri.DECODE, dot=dot)
    if spans is not None:  # one key tile for both forms, so that every program gets several spans
        cfg.update(BN=spans[0], min_span=spans[1], dot_tiles=())
    monkeypatch.setattr(tri, "DECODE", cfg)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, 1, H, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, S, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, S, DV, generator=g, dtype=torch.float64).transpose(1, 2)
    mask = torch.rand(B, S, generator=g) > 0.3 if km else None
    if km:
        mask[-1] = False
    with torch.no_grad():
        o = swska_triton(q.to(DEV, dtype), k.to(DEV, dtype), v.to(DEV, dtype), window=W,
                         key_mask=mask.to(DEV) if km else None)  # fmt: skip
    o_ref = swska_naive(q, k, v, window=W, key_mask=mask)
    assert o.shape == (B, 1, H, DV) and o.dtype == dtype
    _close("o", o, o_ref, rel=TOL[dtype])
    if km:
        assert torch.all(o[-1] == 0)


def test_decode_tiles_by_rows(monkeypatch):
    """The padded-dot form takes the first of DECODE["dot_tiles"] that holds B x H rows; row sums (and the
    dot form without tiles) take DECODE's own BN and warps."""
    from rodimus.ops.triton import swska as tri

    monkeypatch.setattr(tri, "DECODE", dict(tri.DECODE, BN=128, num_warps=2, dot_tiles=((64, 64, 4), (None, 32, 2))))
    assert tri._decode_tile(16, True) == tri._decode_tile(64, True) == (64, 4)
    assert tri._decode_tile(65, True) == tri._decode_tile(4096, True) == (32, 2)
    assert tri._decode_tile(16, False) == (128, 2)
    monkeypatch.setitem(tri.DECODE, "dot_tiles", ((8, 16, 1),))
    assert tri._decode_tile(8, True) == (16, 1) and tri._decode_tile(9, True) == (128, 2)


@pytest.mark.parametrize("dot", [False, True], ids=["row-sums", "dots"])
def test_decode_reads_a_cache_of_another_dtype(monkeypatch, dot):
    """A float32 cache with bf16 queries (StaticDecoder's ring buffers) is read as it is, in float32 (the
    padded-dot form, whose operands share a dtype, gives way to row sums), never cast whole first."""
    from rodimus.ops.triton import swska as tri

    monkeypatch.setattr(tri, "DECODE", dict(tri.DECODE, BN=16, min_span=16, dot=dot, dot_tiles=()))
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 1, 2, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, 60, 16, generator=g, dtype=torch.float64)
    v = torch.randn(2, 60, 2, 16, generator=g, dtype=torch.float64)
    qd, kd, vd = q.to(DEV, torch.bfloat16), k.to(DEV, torch.float32), v.to(DEV, torch.float32)
    casts = []
    to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda t, *a, **kw: casts.append(t.shape) or to(t, *a, **kw))
    with torch.no_grad():
        o = swska_triton(qd, kd, vd, window=40)
    monkeypatch.setattr(torch.Tensor, "to", to)
    assert k.shape not in casts and v.shape not in casts
    assert o.dtype == torch.bfloat16
    _close("o", o, swska_naive(to(q, torch.bfloat16).double(), k, v, window=40), rel=TOL[torch.bfloat16])


def test_decode_benchmark_runs():
    """benchmarks/swska_decode.py (the decode step per DECODE setting against SDPA and its floor) runs, and
    checks every variant's output (here the default padded dots and the row sums)."""
    out = run_benchmark("swska_decode.py", "--smoke", '[{}, {"dot": false}]')
    errs = [float(e.split(")")[0]) for e in out.split("err ")[1:]]
    assert len(errs) == 2 and max(errs) < TOL[torch.bfloat16], out


def test_registered_with_the_torch_signature():
    assert dispatch.triton_available()
    assert dispatch.REGISTRY["swska"]["triton"] is swska_triton
    assert inspect.signature(swska_triton) == inspect.signature(swska_blocked)
