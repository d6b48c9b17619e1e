"""The fused rotary embedding (Triton; interpreter on CPU) against the float64 torch reference."""

from __future__ import annotations

import pytest
import torch

from rodimus.ops.rotary import rotary
from tests.helpers import assert_close

pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e .[triton])")

from rodimus.ops.triton import rotary_triton  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _inv_freq(D, base=10000.0):
    return 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "B,T,heads,D,per_row",
    [(2, 7, 3, 16, False), (1, 5, 1, 24, False), (3, 4, 5, 8, True), (1, 1, 2, 64, True), (2, 0, 2, 8, False)],
)
def test_forward_and_gradient(B, T, heads, D, per_row, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, heads, D, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 70000, (B, T) if per_row else (T,), generator=g)  # past 64K: fp32 angles
    freq = _inv_freq(D)
    dy = torch.randn(B, T, heads, D, generator=g, dtype=torch.float64)
    xt = x.to(DEV, dtype).requires_grad_()
    y = rotary_triton(xt, pos.to(DEV), freq.float().to(DEV))
    y.backward(dy.to(DEV, dtype))
    assert y.dtype == dtype and y.shape == x.shape
    xr = x.clone().requires_grad_()
    # the reference forms its angles the same way (float32 positions x float32 frequencies)
    y_ref = rotary(xr, pos, freq.float())
    y_ref.backward(dy)
    if T:
        assert_close("y", y, y_ref, rel=TOL[dtype])
        assert_close("dx", xt.grad, xr.grad, rel=TOL[dtype])
        # a rotation keeps each half-pair's norm
        assert_close("norms", y.double().norm(dim=-1), x.norm(dim=-1), rel=TOL[dtype])


def test_checks_name_the_argument():
    x = torch.zeros(1, 3, 2, 8)
    with pytest.raises(ValueError, match="even dim"):
        rotary_triton(torch.zeros(1, 3, 2, 7), torch.arange(3), torch.ones(3))
    with pytest.raises(ValueError, match="positions must be"):
        rotary_triton(x, torch.arange(4), torch.ones(4))
    with pytest.raises(ValueError, match="inv_freq must be"):
        rotary(x, torch.arange(3), torch.ones(3))


def test_shared_frequencies_built_while_serving_train_fine():
    """The layers share one frequency tensor per (dim, base, device); one built under inference_mode
    (serving) must still be savable for backward (training in the same process)."""
    from rodimus.layers.rotary import _INV_FREQ, RotaryEmbedding

    _INV_FREQ.pop((12, 777.0, torch.device(DEV)), None)
    a, b = RotaryEmbedding(12, base=777.0, kernel_backend="triton"), RotaryEmbedding(12, base=777.0)
    with torch.inference_mode():
        a(torch.zeros(1, 2, 1, 12, device=DEV), torch.arange(2, device=DEV))
    assert b.inv_freq(torch.device(DEV)) is a.inv_freq(torch.device(DEV))
    x = torch.randn(1, 3, 2, 12, device=DEV, requires_grad=True)
    a(x, torch.arange(3, device=DEV)).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_column_slices_are_read_in_place():
    """q as a column slice of a fused q/k/v projection (how the attention passes it) == a contiguous copy."""
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(2, 5, 3 * 16 + 8, generator=g).to(DEV).requires_grad_()
    pos, freq = torch.arange(5, device=DEV), _inv_freq(8).float().to(DEV)
    dy = torch.randn(2, 5, 3, 8, generator=g).to(DEV)
    outs = []
    for copy in (False, True):
        q = wide[..., 8:32].view(2, 5, 3, 8)
        y = rotary_triton(q.contiguous() if copy else q, pos, freq)
        outs.append((y, *torch.autograd.grad(y, wide, dy)))
    for name, a, b in zip(("y", "d wide"), *outs, strict=True):
        assert_close(name, a, b, rel=1e-6)
