from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rodimus.ops.short_conv import short_conv, short_conv_naive
from tests.helpers import assert_close


def inputs(B, T, D, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
    return r(B, T, D), r(D, W), r(D), r(B, D, W - 1)


@pytest.mark.parametrize("B,T,D,W", [(2, 9, 5, 4), (1, 1, 3, 4), (3, 2, 4, 4), (1, 17, 6, 2)],
                         ids=["B2-T9-D5-W4", "B1-T1-D3-W4", "B3-T2-D4-W4", "B1-T17-D6-W2"])
def test_fast_matches_reference_fwd_bwd(B, T, D, W):
    x, w, b, h0 = inputs(B, T, D, W)
    outs = []
    for fn in (short_conv_naive, short_conv):
        for t in (x, w, b, h0):
            t.grad = None
        y, s = fn(x, w, b, initial_state=h0)
        (y.sin().sum() + s.cos().sum()).backward()
        outs.append((y, s, [t.grad.clone() for t in (x, w, b, h0)]))
    (y0, s0, g0), (y1, s1, g1) = outs
    assert_close("y", y1, y0, rel=1e-12)
    assert_close("final_state", s1, s0, rel=1e-12)
    for name, a, e in zip(("dx", "dw", "db", "dh0"), g1, g0):
        assert_close(name, a, e, rel=1e-12)


def test_equals_depthwise_conv1d_with_zero_history():
    x, w, b, _ = inputs(2, 11, 5, 4, seed=1)
    ref = F.silu(F.conv1d(x.transpose(1, 2), w[:, None], b, padding=3, groups=5)[..., :11]).transpose(1, 2)
    assert_close("y", short_conv(x, w, b)[0], ref, rel=1e-12)


@pytest.mark.parametrize("fn", [short_conv_naive, short_conv], ids=["naive", "fast"])
def test_packed_documents_do_not_mix(fn):
    x, w, b, _ = inputs(1, 12, 5, 4, seed=2)
    cu = torch.tensor([0, 2, 2, 7, 12])
    y, s = fn(x, w, b, cu_seqlens=cu)
    for i in range(4):
        a, e = int(cu[i]), int(cu[i + 1])
        if a == e:
            assert (s[i] == 0).all()
            continue
        y_i, s_i = short_conv_naive(x[:, a:e], w, b)
        assert_close(f"y[doc {i}]", y[:, a:e], y_i, rel=1e-12)
        assert_close(f"state[doc {i}]", s[i : i + 1], s_i, rel=1e-12)


def test_streaming_in_pieces_equals_whole():
    x, w, b, _ = inputs(2, 10, 4, 4, seed=3)
    y, s = short_conv(x, w, b)
    y1, s1 = short_conv(x[:, :1], w, b)
    y2, s2 = short_conv(x[:, 1:], w, b, initial_state=s1)
    assert_close("y", torch.cat([y1, y2], 1), y, rel=1e-12)
    assert_close("state", s2, s, rel=1e-12)


def test_bad_weight_shape():
    x, w, b, _ = inputs(1, 4, 5, 4)
    with pytest.raises(ValueError, match="weight must be"):
        short_conv(x, w[:3], b)


@pytest.mark.parametrize("form", ["naive", "torch", "triton"])
def test_without_final_state(form):
    """output_final_state=False: the same y (values and gradients), no final state."""
    if form == "triton":
        pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e .[triton])")
        from rodimus.ops.triton import short_conv_triton as fn
    else:
        fn = short_conv_naive if form == "naive" else short_conv
    dev = "cuda" if torch.cuda.is_available() and form == "triton" else "cpu"
    x, w, b, _ = (t.detach().float().to(dev).requires_grad_() for t in inputs(1, 13, 6, 4, seed=2))
    cu = torch.tensor([0, 5, 13], dtype=torch.int32, device=dev)
    y, s = fn(x, w, b, cu_seqlens=cu)
    y2, s2 = fn(x, w, b, cu_seqlens=cu, output_final_state=False)
    assert s is not None and s2 is None
    (dx,) = torch.autograd.grad(y.sin().sum(), x)
    (dx2,) = torch.autograd.grad(y2.sin().sum(), x)
    assert_close("y", y2, y, rel=1e-6)
    assert_close("dx", dx2, dx, rel=1e-6)
