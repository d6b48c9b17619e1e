from __future__ import annotations

import pytest
import torch

from rodimus.ops.swska import swska_blocked, swska_naive
from tests.helpers import assert_close


def inputs(B, T, S, H, D, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    return r(B, T, H, D), r(B, S, D), r(B, S, H, D)


def grads_of(fn, q, k, v, **kw):
    for t in (q, k, v):
        t.grad = None
    o = fn(q, k, v, **kw)
    g = torch.Generator().manual_seed(1)
    (o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum().backward()
    return o, [t.grad.clone() for t in (q, k, v)]


CASES = [  # B, T, S, H, D, window, block
    pytest.param(2, 50, 50, 3, 8, 7, 9, id="B2-T50-S50-H3-D8-w7-blk9"),
    pytest.param(1, 1, 30, 2, 4, 8, 64, id="decode-B1-T1-S30-H2-w8"),
    pytest.param(2, 5, 12, 2, 6, 0, 2, id="B2-T5-S12-w0"),
    pytest.param(1, 200, 200, 1, 16, 64, 32, id="B1-T200-H1-D16-w64-blk32"),
]


@pytest.mark.parametrize("B,T,S,H,D,window,block", CASES)
def test_blocked_matches_reference(B, T, S, H, D, window, block):
    q, k, v = inputs(B, T, S, H, D)
    g = torch.Generator().manual_seed(2)
    key_mask = torch.rand(B, S, generator=g) > 0.2
    o_ref, g_ref = grads_of(swska_naive, q, k, v, window=window, key_mask=key_mask)
    o, grads = grads_of(swska_blocked, q, k, v, window=window, key_mask=key_mask, block_size=block)
    assert_close("o", o, o_ref, rel=1e-12)
    for name, a, e in zip(("dq", "dk", "dv"), grads, g_ref):
        assert_close(name, a, e, rel=1e-12)


def test_band_semantics_against_explicit_loop():
    """Query i sees exactly keys i-window..i (the official flash-attn window (W//2, 0))."""
    q, k, v = inputs(1, 12, 12, 1, 4, seed=3)
    window = 3
    o = swska_naive(q, k, v, window=window)
    for i in range(12):
        lo = max(0, i - window)
        s = (q[0, i, 0] @ k[0, lo : i + 1].T) / 2.0
        ref = torch.softmax(s, -1) @ v[0, lo : i + 1, 0]
        assert_close(f"o[{i}]", o[0, i, 0], ref, rel=1e-12)


def test_fully_masked_row_gives_zero_not_nan():
    q, k, v = inputs(1, 4, 4, 2, 4, seed=4)
    key_mask = torch.tensor([[False, False, True, True]])
    o = swska_blocked(q, k, v, window=2, key_mask=key_mask)
    assert torch.isfinite(o).all()
    assert (o[0, :2] == 0).all()


def test_packed_documents_do_not_attend_across():
    q, k, v = inputs(1, 40, 40, 2, 8, seed=5)
    cu = torch.tensor([0, 9, 30, 40])
    o = swska_blocked(q, k, v, window=6, cu_seqlens=cu, block_size=8)
    for a, b in ((0, 9), (9, 30), (30, 40)):
        ref = swska_naive(q[:, a:b], k[:, a:b], v[:, a:b], window=6)
        assert_close(f"o[{a}:{b}]", o[:, a:b], ref, rel=1e-12)


def test_never_builds_full_scores_for_long_inputs():
    """Blocked memory is O(T x (block + window)): T=16384 runs in float32 on CPU quickly."""
    q, k, v = (t.detach() for t in inputs(1, 16384, 16384, 2, 16, dtype=torch.float32, seed=6))
    o = swska_blocked(q, k, v, window=32, block_size=128)
    ref = swska_naive(q[:, -256:], k[:, -256 - 32 :], v[:, -256 - 32 :], window=32)
    assert_close("tail", o[:, -256:], ref, rel=1e-5)


def test_bad_window():
    q, k, v = inputs(1, 4, 4, 2, 4)
    with pytest.raises(ValueError, match="window"):
        swska_blocked(q, k, v, window=-1)
