"""The chunked linear cross-entropy against the reference: loss and both gradients."""

from __future__ import annotations

import pytest
import torch

from rodimus.ops.cross_entropy import linear_cross_entropy, linear_cross_entropy_chunked
from tests.helpers import assert_close


def _inputs(N=37, d=12, V=50, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, d, generator=g, dtype=dtype).requires_grad_()
    w = torch.randn(V, d, generator=g, dtype=dtype).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    t[[0, 5, 6, N - 1]] = -100
    return h, w, t


@pytest.mark.parametrize("chunk_rows", [1, 8, 37, 1000])
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_matches_reference(chunk_rows, dtype, rel):
    h, w, t = _inputs(dtype=dtype)
    ref = linear_cross_entropy(h, w, t)
    dh_ref, dw_ref = torch.autograd.grad(3.0 * ref, (h, w))
    got = linear_cross_entropy_chunked(h, w, t, chunk_rows=chunk_rows)
    dh, dw = torch.autograd.grad(3.0 * got, (h, w))
    assert got.dtype == ref.dtype and dh.dtype == h.dtype and dw.dtype == w.dtype
    assert_close("loss", got, ref, rel=rel)
    assert_close("dh", dh, dh_ref, rel=rel)
    assert_close("dweight", dw, dw_ref, rel=rel)


def test_autocast_bf16_close_to_float32():
    h, w, t = _inputs(dtype=torch.float32)
    ref = linear_cross_entropy(h, w, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy_chunked(h, w, t, chunk_rows=10)
        base = linear_cross_entropy(h, w, t)
    dh, dw = torch.autograd.grad(got, (h, w))
    dh_ref, dw_ref = torch.autograd.grad(ref, (h, w))
    assert dw.dtype == torch.float32  # the parameter's dtype, through the cast
    assert_close("loss vs fp32", got, ref, rel=2e-2)
    assert_close("loss vs autocast reference", got, base, rel=1e-3)
    assert_close("dh", dh, dh_ref, rel=3e-2)
    assert_close("dweight", dw, dw_ref, rel=3e-2)


def test_no_grad_and_all_ignored():
    h, w, t = _inputs(dtype=torch.float32)
    with torch.no_grad():
        assert_close("loss", linear_cross_entropy_chunked(h, w, t), linear_cross_entropy(h, w, t), rel=1e-5)
    t_all = torch.full_like(t, -100)
    loss = linear_cross_entropy_chunked(h, w, t_all)
    dh, dw = torch.autograd.grad(loss, (h, w))
    assert float(loss.detach()) == 0.0 and not dh.any() and not dw.any()


def test_validation():
    h, w, t = _inputs()
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy_chunked(h, w, t[:-1])
    with pytest.raises(ValueError, match=r"weight \[V, d\]"):
        linear_cross_entropy_chunked(h, w[:, :-1], t)
    with pytest.raises(ValueError, match="chunk_rows"):
        linear_cross_entropy_chunked(h, w, t, chunk_rows=0)


@pytest.mark.parametrize(
    "dtype,rel",
    [pytest.param(torch.float32, 1e-5, id="fp32-V300"), pytest.param(torch.bfloat16, 1e-2, id="bf16-V300")],
)
def test_fused_softmax_xent_matches_reference(dtype, rel):
    """The Triton row kernel (interpreter on CPU; V spans several of its blocks) against float64."""
    pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e .[triton])")
    from rodimus.ops.softmax_xent import softmax_xent_grad_
    from rodimus.ops.triton import softmax_xent_grad_triton_

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(9, 300, generator=g, dtype=torch.float64) * 4).to(dtype)
    targets = torch.randint(0, 300, (9,), generator=g)
    targets[[2, 7]] = -1
    ref_grad = logits.double()
    ref_loss = softmax_xent_grad_(ref_grad, targets)
    got = logits.to(dev)
    loss = softmax_xent_grad_triton_(got, targets.to(dev))
    assert loss.dtype == torch.float32 and got.dtype == dtype
    assert_close("loss", loss.cpu(), ref_loss, rel=1e-5)
    assert_close("d logits", got.cpu(), ref_grad, rel=rel)
    assert float(loss[2]) == 0.0 and not got[7].any()


def test_chunked_through_the_fused_kernel(monkeypatch):
    """linear_cross_entropy_chunked with the Triton row kernel: same loss and gradients."""
    pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e .[triton])")
    monkeypatch.setenv("RODIMUS_KERNELS", "triton")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    h, w, t = (x.detach().to(dev).requires_grad_(x.requires_grad) for x in _inputs(V=200, dtype=torch.float32))
    ref = linear_cross_entropy(h, w, t)
    dh_ref, dw_ref = torch.autograd.grad(ref, (h, w))
    got = linear_cross_entropy_chunked(h, w, t, chunk_rows=16)
    dh, dw = torch.autograd.grad(got, (h, w))
    for name, a, b in (("loss", got, ref), ("dh", dh, dh_ref), ("dweight", dw, dw_ref)):
        assert_close(name, a, b, rel=1e-5)
