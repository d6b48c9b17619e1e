"""The fused gated RMSNorm (Triton; interpreter on CPU) against the float64 torch reference."""

from __future__ import annotations

import pytest
import torch

from rodimus.ops.norm import gated_rms_norm, gated_rms_norm_backward, rms_norm
from tests.helpers import assert_close

pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e .[triton])")

from rodimus.ops.triton import gated_rms_norm_backward_triton, gated_rms_norm_triton, rms_norm_triton  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


def _inputs(shape, dtype, skip, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = shape[-1]

    def r(*s, scale=1.0, dt=dtype):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(DEV, dt).requires_grad_()

    o, gate = r(*shape), r(*shape, scale=2.0)
    w = (1 + torch.rand(D, generator=g, dtype=torch.float64)).to(DEV, torch.float32).requires_grad_()
    if not skip:
        return o, gate, w, None, None
    return o, gate, w, r(*shape), r(D, dt=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,skip", [((2, 5, 40), True), ((1, 3, 64), False), ((7, 130), True), ((0, 16), True)])
def test_forward_and_every_gradient(shape, skip, dtype):
    xs = _inputs(shape, dtype, skip)
    y = gated_rms_norm_triton(xs[0], xs[1], xs[2], 1e-5, skip_x=xs[3], skip_weight=xs[4])
    assert y.dtype == dtype and y.shape == shape
    ref = [x.detach().cpu().double().requires_grad_() if x is not None else None for x in xs]
    y_ref = gated_rms_norm(ref[0], ref[1], ref[2], 1e-5, skip_x=ref[3], skip_weight=ref[4])
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y.backward(dy.to(DEV, dtype))
    y_ref.backward(dy)
    tol = TOL[dtype]
    assert_close("y", y.detach().cpu(), y_ref.detach(), rel=tol)
    for name, x, xr in zip(("do", "dgate", "dweight", "dskip_x", "dskip_weight"), xs, ref, strict=True):
        if x is not None and x.numel():
            assert x.grad.dtype == x.dtype
            assert_close(name, x.grad.cpu(), xr.grad, rel=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape,gate,skip",
    [((2, 5, 40), True, True), ((1, 3, 64), True, False), ((7, 130), False, False), ((0, 16), True, True)],
)
def test_backward_with_output(shape, gate, skip, dtype):
    """The fused backward's y and gradients (no forward pass before it) == the float64 reference's."""
    o, g, w, x, d = _inputs(shape, dtype, skip)
    g = g if gate else None
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = gated_rms_norm_backward_triton(o, g, w, 1e-5, x, d, dy.to(DEV, dtype))
    ref = [t.detach().cpu().double() if t is not None else None for t in (o, g, w, x, d)]
    expected = gated_rms_norm_backward(*ref[:3], 1e-5, *ref[3:], dy)
    y_ref = gated_rms_norm(*ref[:3], 1e-5, skip_x=ref[3], skip_weight=ref[4])
    assert torch.equal(expected[0], y_ref)  # the reference's y is the forward's
    names = ("y", "do", "dgate", "dweight", "dskip_x", "dskip_weight")
    for name, t, a, b in zip(names, (o, o, g, w, x, d), got, expected, strict=True):
        assert (a is None) == (t is None) == (b is None), name
        if a is not None:
            assert a.dtype == t.dtype and a.shape == t.shape, name
            if a.numel():
                assert_close(name, a.cpu(), b, rel=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plain_rms_norm(dtype):
    x, _, w, _, _ = _inputs((3, 5, 48), dtype, False)
    y = rms_norm_triton(x, w, 1e-6)
    xr, wr = (t.detach().double().cpu().requires_grad_() for t in (x, w))
    y_ref = rms_norm(xr, wr, 1e-6)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y.backward(dy.to(DEV, dtype))
    y_ref.backward(dy)
    assert y.dtype == dtype
    for name, a, b in (("y", y, y_ref), ("dx", x.grad, xr.grad), ("dweight", w.grad, wr.grad)):
        assert_close(name, a.detach().cpu(), b.detach(), rel=TOL[dtype])


def test_rms_norm_out_dtype():
    """A float32 residual normalised straight into bf16 (what autocast's projection reads): the values of
    normalising in float32 and casting, within one bf16 step (the interpreter's cast truncates where
    the GPU's rounds to nearest), and a bf16 output gradient gives a float32 input one."""
    x, _, w, _, _ = _inputs((4, 5, 48), torch.float32, False)
    y = rms_norm_triton(x, w, 1e-6, torch.bfloat16)
    assert y.dtype == torch.bfloat16 and x.dtype == torch.float32
    ulp = dict(rtol=2**-7, atol=1e-6)
    torch.testing.assert_close(y, rms_norm(x, w, 1e-6).to(torch.bfloat16), **ulp)
    torch.testing.assert_close(y, rms_norm(x, w, 1e-6, torch.bfloat16), **ulp)
    xr, wr = (t.detach().double().cpu().requires_grad_() for t in (x, w))
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(torch.bfloat16)
    y.backward(dy.to(DEV))
    rms_norm(xr, wr, 1e-6).backward(dy.double())
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    assert_close("dx", x.grad.cpu(), xr.grad, rel=1e-4)
    assert_close("dweight", w.grad.cpu(), wr.grad, rel=1e-4)


def test_reference_matches_unfused_definition():
    """The folded skip term equals adding it first and normalising afterwards (the layer's old form)."""
    o, gate, w, x, d = (t.detach() for t in _inputs((3, 4, 24), torch.float64, True))
    m = (o + d * x) * torch.nn.functional.silu(gate)
    expect = m * torch.rsqrt(m.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(gated_rms_norm(o, gate, w, 1e-6, skip_x=x, skip_weight=d), expect)


def test_validation():
    o = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="gate"):
        gated_rms_norm(o, torch.zeros(2, 9), torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match="weight"):
        gated_rms_norm(o, o, torch.ones(7), 1e-5)
    with pytest.raises(ValueError, match="together"):
        gated_rms_norm(o, o, torch.ones(8), 1e-5, skip_x=o)


@pytest.mark.parametrize("activation", ["sigmoid", "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gate_mul(activation, dtype):
    from rodimus.ops.gating import gate_mul
    from rodimus.ops.triton import gate_mul_triton

    g = torch.Generator().manual_seed(3)
    a, x = (torch.randn(3, 1000, generator=g, dtype=torch.float64).mul(3).to(DEV, dtype).requires_grad_() for _ in "ax")
    y = gate_mul_triton(a, x, activation)
    ar, xr = (t.detach().cpu().double().requires_grad_() for t in (a, x))
    y_ref = gate_mul(ar, xr, activation)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    y.backward(dy.to(DEV, dtype))
    y_ref.backward(dy)
    assert y.dtype == dtype
    for name, u, v in (("y", y, y_ref), ("da", a.grad, ar.grad), ("dx", x.grad, xr.grad)):
        assert_close(name, u.detach().cpu(), v.detach(), rel=TOL[dtype])
    with pytest.raises(ValueError, match="activation"):
        gate_mul(ar, xr, "relu")


def test_strided_inputs_need_no_copy():
    """Column slices of a wider projection (how the layers call them) give the same results as copies."""
    from rodimus.ops.triton import gate_mul_triton

    g = torch.Generator().manual_seed(4)
    wide = torch.randn(2, 5, 3 * 24, generator=g, dtype=torch.float64).to(DEV, torch.float32).requires_grad_()
    a, x, gate = wide.split(24, dim=-1)
    w = torch.rand(24, generator=g, dtype=torch.float64).to(DEV, torch.float32)
    y1 = gate_mul_triton(a, x, "silu") + gated_rms_norm_triton(x, gate, w, 1e-5)
    (d1,) = torch.autograd.grad(y1.square().sum(), wide)
    wide2 = wide.detach().clone().requires_grad_()
    a2, x2, gate2 = (t.contiguous() for t in wide2.split(24, dim=-1))
    y2 = gate_mul_triton(a2, x2, "silu") + gated_rms_norm_triton(x2, gate2, w, 1e-5)
    (d2,) = torch.autograd.grad(y2.square().sum(), wide2)
    assert_close("y", y1, y2, rel=1e-6)
    assert_close("d wide", d1, d2, rel=1e-6)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("autocast", [False, True])
def test_norm_then_project_matches_unfused(backend, autocast):
    """GatedRMSNorm.project (normalised tensor recomputed in backward) == proj(norm(...)), values and grads."""
    from rodimus.layers.norm import GatedRMSNorm

    torch.manual_seed(0)
    norm = GatedRMSNorm(24, eps=1e-5, kernel_backend=backend).to(DEV)
    proj = torch.nn.Linear(24, 10, bias=False).to(DEV)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    o, gate, _, x, d = _inputs((2, 5, 24), torch.float32, True)
    ctx = torch.autocast(DEV, dtype=torch.bfloat16) if autocast else torch.autocast(DEV, enabled=False)
    results = []
    for fused in (True, False):
        for t in (o, gate, x, d, norm.weight, proj.weight):
            t.grad = None
        with ctx:
            out = norm.project(o, gate, proj, skip_x=x, skip_weight=d) if fused else proj(norm(o, gate, x, d))
        out.float().square().sum().backward()
        results.append([out.detach()] + [t.grad.clone() for t in (o, gate, x, d, norm.weight, proj.weight)])
    tol = 2e-2 if autocast else 1e-5
    assert results[0][0].dtype == results[1][0].dtype
    for name, a, b in zip(("out", "do", "dgate", "dx", "dskip", "dnorm_w", "dproj_w"), *results, strict=True):
        assert_close(name, a.float().cpu(), b.float().cpu(), rel=tol)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("autocast", [False, True])
def test_ffn_project_matches_unfused(backend, autocast):
    """The FFN's out projection of silu(g) * a (the product remade by the backward kernel, not kept) ==
    out_proj(gate_mul(...)), values and gradients."""
    from rodimus.layers.ffn import GatedMLP
    from rodimus.ops.gating import gate_mul

    torch.manual_seed(0)
    ffn = GatedMLP(16, 40, kernel_backend=backend).to(DEV)
    x = torch.randn(2, 5, 16, device=DEV, requires_grad=True)
    ctx = torch.autocast(DEV, dtype=torch.bfloat16) if autocast else torch.autocast(DEV, enabled=False)
    results = []
    for fused in (True, False):
        for t in (x, *ffn.parameters()):
            t.grad = None
        with ctx:
            if fused:
                out = ffn(x)
            else:
                a, g = ffn.fc(x).split([40, 40], dim=-1)
                out = ffn.out_proj(gate_mul(g, a, "silu"))
        out.float().square().sum().backward()
        results.append([out.detach()] + [t.grad.clone() for t in (x, ffn.fc.weight, ffn.out_proj.weight)])
    tol = 2e-2 if autocast else 1e-5
    assert results[0][0].dtype == results[1][0].dtype
    for name, a, b in zip(("out", "dx", "dfc", "dout_proj"), *results, strict=True):
        assert_close(name, a.float().cpu(), b.float().cpu(), rel=tol)


@pytest.mark.parametrize("activation", ["sigmoid", "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gate_mul_backward(activation, dtype):
    """The explicit backward (both forms) == autograd through gate_mul in float64."""
    from rodimus.ops.gating import gate_mul, gate_mul_backward
    from rodimus.ops.triton import gate_mul_backward_triton

    g = torch.Generator().manual_seed(5)
    a, x, dy = (torch.randn(4, 300, generator=g, dtype=torch.float64).mul(3) for _ in "axd")
    ar, xr = a.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref = gate_mul(ar, xr, activation)
    y_ref.backward(dy)
    for fn in (gate_mul_backward, gate_mul_backward_triton):
        da, dx = fn(*(t.to(DEV, dtype) for t in (a, x, dy)), activation)
        assert da.dtype == dx.dtype == dtype
        assert_close(f"{fn.__name__} da", da.cpu(), ar.grad, rel=TOL[dtype])
        assert_close(f"{fn.__name__} dx", dx.cpu(), xr.grad, rel=TOL[dtype])
        # with_output: the same gradients, and the product itself from the same pass
        da2, dx2, y = fn(*(t.to(DEV, dtype) for t in (a, x, dy)), activation, with_output=True)
        assert torch.equal(da2, da) and torch.equal(dx2, dx) and y.dtype == dtype
        assert_close(f"{fn.__name__} y", y.cpu(), y_ref.detach(), rel=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_low_rank_gate_mul(dtype, bias):
    """sigmoid(xa W^T + b) * x and its backward (d a, d x, d xa; d x also with the low-rank path through
    W_down), both forms, == float64 autograd; rank 6 (padded to 16 in the kernels), rows and columns not
    multiples of the tiles, x a column slice."""
    from rodimus.ops.gating import low_rank_gate_mul, low_rank_gate_mul_backward
    from rodimus.ops.triton import low_rank_gate_mul_backward_triton, low_rank_gate_mul_triton

    g = torch.Generator().manual_seed(6)
    rows, D, R = 75, 200, 6
    xa, du = torch.randn(rows, R, generator=g, dtype=torch.float64), torch.randn(rows, D, generator=g).double()
    wide = torch.randn(rows, 2 * D, generator=g, dtype=torch.float64)
    w = torch.randn(D, R, generator=g, dtype=torch.float64) * 0.7
    b = torch.randn(D, generator=g, dtype=torch.float64) if bias else None
    wd = torch.randn(R, D, generator=g, dtype=torch.float64) * 0.3
    cast = [t.to(DEV, dtype) if t is not None else None for t in (xa, w, b, wide, wd)]
    xa_d, w_d, b_d, wide_d, wd_d = cast
    x_d = wide_d[:, D:]  # row stride 2D: the kernels read it in place
    # float64 reference from the same rounded inputs, a as its own leaf so d a is autograd's too
    xr, wr, br, xwr = (t.double().cpu() if t is not None else None for t in (xa_d, w_d, b_d, x_d))
    a = torch.nn.functional.linear(xr, wr, br).requires_grad_()
    xwr = xwr.clone().requires_grad_()
    u_ref = torch.sigmoid(a) * xwr
    u_ref.backward(du)
    dxa_ref = a.grad @ wr
    dx_full_ref = xwr.grad + dxa_ref @ wd_d.double().cpu()
    for fwd, bwd in ((low_rank_gate_mul, low_rank_gate_mul_backward),
                     (low_rank_gate_mul_triton, low_rank_gate_mul_backward_triton)):
        u = fwd(xa_d, w_d, b_d, x_d)
        da, dx, dxa = bwd(xa_d, w_d, b_d, x_d, du.to(DEV, dtype))
        assert u.dtype == da.dtype == dx.dtype == dxa.dtype == dtype
        assert dxa.shape == xa.shape
        da2, dx_full, dxa2 = bwd(xa_d, w_d, b_d, x_d, du.to(DEV, dtype), wd_d)
        assert torch.equal(da2, da) and torch.equal(dxa2, dxa) and dx_full.dtype == dtype
        for name, got, ref in (("u", u, u_ref), ("da", da, a.grad), ("dx", dx, xwr.grad), ("dxa", dxa, dxa_ref),
                               ("dx with W_down", dx_full, dx_full_ref)):
            assert_close(f"{fwd.__name__} {name}", got.cpu(), ref.detach(), rel=TOL[dtype])
    with pytest.raises(ValueError, match="w must be"):
        low_rank_gate_mul(xa_d, w_d.t(), b_d, x_d)
    with pytest.raises(ValueError, match="w_down must be"):
        low_rank_gate_mul_backward(xa_d, w_d, b_d, x_d, x_d, wd_d.t())


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("autocast", [False, True])
def test_low_rank_gate_matches_unfused(backend, autocast):
    """low_rank_gate (pre-activation rebuilt in backward) == gate_mul(up(down(x)), x), values and grads."""
    from rodimus.layers.recompute import low_rank_gate
    from rodimus.ops.gating import gate_mul

    torch.manual_seed(0)
    down = torch.nn.Linear(40, 6, bias=False).to(DEV)
    up = torch.nn.Linear(6, 40).to(DEV)
    x = torch.randn(2, 7, 40, device=DEV).requires_grad_()
    params = (x, down.weight, up.weight, up.bias)
    ctx = torch.autocast(DEV, dtype=torch.bfloat16) if autocast else torch.autocast(DEV, enabled=False)
    results = []
    for fused in (True, False):
        for t in params:
            t.grad = None
        xin = x.to(torch.bfloat16) if autocast else x  # the mixer's x is already in the autocast dtype
        with ctx:
            u = low_rank_gate(xin, down, up, backend) if fused else gate_mul(up(down(xin)), xin, "sigmoid")
        u.float().square().sum().backward()
        results.append([u.detach()] + [t.grad.clone() for t in params])
    tol = 2e-2 if autocast else 1e-5
    assert results[0][0].dtype == results[1][0].dtype
    for name, a, b in zip(("u", "dx", "d down.w", "d up.w", "d up.b"), *results, strict=True):
        assert_close(name, a.float().cpu(), b.float().cpu(), rel=tol)


@pytest.mark.parametrize("out_dtype", [None, torch.bfloat16])
def test_rms_norm_pass_sums_the_residual_gradient(out_dtype):
    """The pass-through output is x, and x's gradient is the norm's plus the pass-through's (summed in the
    backward kernel), as autograd sums them for the reference."""
    from rodimus.ops.norm import rms_norm_pass
    from rodimus.ops.triton import rms_norm_pass_triton

    x, _, w, _, _ = _inputs((3, 5, 48), torch.float32, False)
    y, x_out = rms_norm_pass_triton(x, w, 1e-6, out_dtype)
    assert torch.equal(x_out, x) and x_out.dtype == torch.float32 and y.dtype == (out_dtype or torch.float32)
    xr, wr = (t.detach().double().cpu().requires_grad_() for t in (x, w))
    y_ref, x_ref = rms_norm_pass(xr, wr, 1e-6)
    assert x_ref is xr
    g = torch.Generator().manual_seed(4)
    dy, dr = (torch.randn(y.shape, generator=g, dtype=torch.float64) for _ in range(2))
    torch.autograd.backward([y, x_out.sin()], [dy.to(DEV, y.dtype), dr.to(DEV)])
    torch.autograd.backward([y_ref, x_ref.sin()], [dy.to(y.dtype).double(), dr])
    assert_close("dx", x.grad.cpu(), xr.grad, rel=1e-4)
    assert_close("dweight", w.grad.cpu(), wr.grad, rel=1e-4)
    # only the norm's output used: the pass-through's gradient is zero, x's is the norm's alone
    x.grad = None
    y2, _ = rms_norm_pass_triton(x, w, 1e-6)
    y2.backward(dy.to(DEV, torch.float32))
    xr.grad = None
    rms_norm(xr, wr, 1e-6).backward(dy)
    assert_close("dx (norm only)", x.grad.cpu(), xr.grad, rel=1e-4)


def test_low_rank_gate_calls_wrapped_projections():
    """A projection that is not a plain linear (here one with a forward hook, as adapters add) is called,
    not bypassed by reading its weight: the hook's effect shows in the output, with and without grad."""
    from rodimus.layers.recompute import low_rank_gate

    torch.manual_seed(0)
    down, up = torch.nn.Linear(40, 6, bias=False).to(DEV), torch.nn.Linear(6, 40).to(DEV)
    x = torch.randn(2, 7, 40, device=DEV, requires_grad=True)
    plain = low_rank_gate(x, down, up, "torch")
    up.register_forward_hook(lambda _m, _i, out: out + 1.0)
    hooked = low_rank_gate(x, down, up, "torch")
    with torch.no_grad():
        hooked_nograd = low_rank_gate(x, down, up, "torch")
    ref = torch.sigmoid(up(down(x))) * x  # up(...) includes the hook's +1
    assert_close("hooked", hooked, ref, rel=1e-6)
    assert_close("hooked, no grad", hooked_nograd, ref, rel=1e-6)
    assert not torch.allclose(plain, hooked)
    hooked.sum().backward()
    assert x.grad is not None and down.weight.grad is not None
