"""The Triton short-convolution kernels (under the interpreter on CPU) against the float64 reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e .[triton])")

from rodimus.ops import dispatch  # noqa: E402
from rodimus.ops.short_conv import short_conv, short_conv_naive  # noqa: E402
from rodimus.ops.triton import short_conv as sc_mod  # noqa: E402
from rodimus.ops.triton import short_conv_triton  # noqa: E402
from tests.helpers import assert_close  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # compiled kernels on a GPU, else the interpreter
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
CASES = [  # B, T, D, W, dtype, initial_state, bias, activation, cu_seqlens
    pytest.param(2, 70, 40, 4, torch.float32, True, True, "silu", None, id="B2-T70-D40-fp32-init"),
    pytest.param(3, 1, 24, 4, torch.float32, True, True, "silu", None, id="B3-T1-D24-fp32-init"),
    pytest.param(2, 2, 40, 4, torch.float32, True, True, "silu", None, id="B2-T2-D40-fp32-init-T<W-1"),
    pytest.param(1, 2, 40, 4, torch.float32, False, True, "silu", None, id="B1-T2-D40-fp32-T<W-1"),
    pytest.param(3, 33, 136, 3, torch.float32, False, False, None, None, id="B3-T33-D136-W3-fp32-nobias-noact"),
    pytest.param(1, 9, 20, 2, torch.float32, True, True, None, None, id="B1-T9-D20-W2-fp32-init-noact"),
    pytest.param(2, 45, 40, 6, torch.float32, True, True, "silu", None, id="B2-T45-D40-W6-fp32-init"),
    pytest.param(1, 40, 24, 6, torch.float32, False, True, "silu", [0, 3, 20, 40], id="packed3-W6-fp32"),
    pytest.param(1, 80, 40, 4, torch.float32, False, True, "silu", [0, 13, 13, 14, 70, 80], id="packed5-fp32"),
    pytest.param(1, 0, 16, 4, torch.float32, True, True, "silu", None, id="T0-init"),
    pytest.param(2, 70, 40, 4, torch.bfloat16, True, True, "silu", None, id="B2-T70-D40-bf16-init"),
    pytest.param(1, 50, 40, 4, torch.bfloat16, False, False, "silu", [0, 1, 1, 50], id="packed3-bf16-nobias"),
]


def _inputs(B, T, D, W, *, init, bias, seed=0):
    """float64 CPU inputs: x, weight, bias (or None), initial_state (or None)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    w = torch.randn(D, W, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(D, generator=g, dtype=torch.float64) if bias else None
    h0 = torch.randn(B, D, W - 1, generator=g, dtype=torch.float64) if init else None
    return [x, w, b, h0]


def _leaves(ts, dtype):
    return [t.to(DEV, dtype).requires_grad_() if t is not None else None for t in ts]


def _close(name, actual, expected, *, rel):
    assert_close(name, actual.detach().cpu(), expected.detach().cpu(), rel=rel)


def _check_against_reference(B, T, D, W, dtype, init, bias, act, cu):
    cu = torch.tensor(cu) if cu is not None else None
    base = _inputs(B, T, D, W, init=init, bias=bias)
    ins = _leaves(base, dtype)
    ref = [t.clone().requires_grad_() if t is not None else None for t in base]
    y, s = short_conv_triton(
        ins[0], ins[1], ins[2], initial_state=ins[3], cu_seqlens=cu.to(DEV) if cu is not None else None, activation=act
    )
    y_ref, s_ref = short_conv_naive(ref[0], ref[1], ref[2], initial_state=ref[3], cu_seqlens=cu, activation=act)
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
    ds = torch.randn(s_ref.shape, generator=g, dtype=torch.float64)
    torch.autograd.backward([y, s], [dy.to(DEV, dtype), ds.to(DEV, dtype)])
    pairs = [(o, d) for o, d in ((y_ref, dy), (s_ref, ds)) if o.requires_grad]  # the reference's empty y has none
    torch.autograd.backward([o for o, _ in pairs], [d for _, d in pairs])
    tol = TOL[dtype]
    assert y.dtype == dtype and s.dtype == dtype
    if T:
        _close("y", y, y_ref, rel=tol)
    _close("final_state", s, s_ref, rel=tol)
    for name, a, r in zip(("dx", "dweight", "dbias", "dinitial_state"), ins, ref, strict=True):
        if a is not None and r.grad is not None and r.grad.norm() > 0:
            assert a.grad is not None and a.grad.dtype == a.dtype, name
            _close(name, a.grad, r.grad, rel=tol)


@pytest.mark.parametrize("B,T,D,W,dtype,init,bias,act,cu", CASES)
def test_forward_and_every_gradient(B, T, D, W, dtype, init, bias, act, cu):
    _check_against_reference(B, T, D, W, dtype, init, bias, act, cu)


def test_backward_with_several_row_tiles_per_program(monkeypatch):
    """The backward merges row tiles per program on big inputs; force that path on small ones."""
    monkeypatch.setattr(sc_mod, "_bwd_steps", lambda n_tiles, n_other: 2)
    _check_against_reference(2, 150, 40, 4, torch.float32, True, True, "silu", None)
    _check_against_reference(1, 150, 24, 4, torch.float32, False, True, "silu", [0, 64, 65, 150])


def test_strided_input_and_untracked_state():
    """x as a channel slice of a wider tensor (no copy needed), initial_state without grad."""
    x, w, b, h0 = _inputs(2, 40, 48, 4, init=True, bias=True, seed=3)
    wide = torch.cat([x, x.flip(-1)], dim=-1).to(DEV, torch.float32).requires_grad_()
    xs = wide[..., :48]
    assert not xs.is_contiguous()
    wf, bf = (t.to(DEV, torch.float32).requires_grad_() for t in (w, b))
    y, s = short_conv_triton(xs, wf, bf, initial_state=h0.to(DEV, torch.float32))
    (y.square().sum() + s.sum()).backward()
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    y_ref, s_ref = short_conv_naive(xr, wr, br, initial_state=h0)
    (y_ref.square().sum() + s_ref.sum()).backward()
    _close("y", y, y_ref, rel=1e-4)
    _close("final_state", s, s_ref, rel=1e-4)
    _close("dx", wide.grad[..., :48], xr.grad, rel=1e-4)
    assert (wide.grad[..., 48:] == 0).all()
    _close("dweight", wf.grad, wr.grad, rel=1e-4)
    _close("dbias", bf.grad, br.grad, rel=1e-4)


def test_packed_documents_do_not_leak():
    """Changing one document's tokens leaves every other document's outputs bit-identical."""
    cu = torch.tensor([0, 20, 23, 40], device=DEV)
    x, w, b, _ = (t.to(DEV, torch.float32) if t is not None else None for t in _inputs(1, 40, 40, 4, init=False,
                                                                                        bias=True, seed=4))
    y1, s1 = short_conv_triton(x, w, b, cu_seqlens=cu)
    x2 = x.clone()
    x2[:, 20:23] += 1.0
    y2, s2 = short_conv_triton(x2, w, b, cu_seqlens=cu)
    assert torch.equal(y1[:, :20], y2[:, :20]) and torch.equal(y1[:, 23:], y2[:, 23:])
    assert not torch.equal(y1[:, 20:23], y2[:, 20:23])
    assert torch.equal(s1[[0, 2]], s2[[0, 2]])


def test_float64_routes_to_torch_form_and_registry():
    x, w, b, h0 = _inputs(2, 9, 5, 4, init=True, bias=True)
    y, s = short_conv_triton(x, w, b, initial_state=h0)
    y_ref, s_ref = short_conv(x, w, b, initial_state=h0)
    assert y.dtype == torch.float64 and torch.equal(y, y_ref) and torch.equal(s, s_ref)
    assert dispatch.REGISTRY["short_conv"]["triton"] is short_conv_triton
    with pytest.raises(ValueError, match="activation"):
        short_conv_triton(x, w, b, activation="relu")


@pytest.mark.parametrize("cu", [None, [0, 5, 5, 40]], ids=["batched", "packed"])
@pytest.mark.parametrize("conv_grad", [True, False], ids=["both", "pass-only"])
@pytest.mark.parametrize("form", ["triton", "torch", "naive"])
def test_pass_input_adds_the_other_consumers_gradient(form, conv_grad, cu):
    """With ``pass_input`` the third result is x itself; a consumer reading it gets x's gradient summed
    with the conv's (inside the Triton dx kernel), also when only that consumer carries a gradient."""
    fn = {"triton": short_conv_triton, "torch": short_conv, "naive": short_conv_naive}[form]
    B = 2 if cu is None else 1
    cu = torch.tensor(cu) if cu is not None else None
    base = _inputs(B, 40, 24, 4, init=False, bias=True)
    ins = _leaves(base, torch.float32)
    ref = [t.clone().requires_grad_() if t is not None else None for t in base]
    kw = dict(cu_seqlens=cu.to(DEV) if cu is not None else None)
    y, s, xp = fn(ins[0], ins[1], ins[2], pass_input=True, **kw)
    assert xp is ins[0] or torch.equal(xp, ins[0])
    y_ref, _ = short_conv_naive(ref[0], ref[1], ref[2], cu_seqlens=cu)
    g = torch.Generator().manual_seed(3)
    dy, dp = (torch.randn(y_ref.shape, generator=g, dtype=torch.float64) for _ in range(2))
    other = (xp.sin() * dp.to(DEV, torch.float32)).sum()  # a non-linear consumer of the passed-through x
    ((y * dy.to(DEV, torch.float32)).sum() + other if conv_grad else other).backward()
    other_ref = (ref[0].sin() * dp).sum()
    ((y_ref * dy).sum() + other_ref if conv_grad else other_ref + 0 * y_ref.sum()).backward()
    _close("dx", ins[0].grad, ref[0].grad, rel=TOL[torch.float32])
    if conv_grad:
        _close("dweight", ins[1].grad, ref[1].grad, rel=TOL[torch.float32])
