"""Every DDTS form against the sequential float64 reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from rodimus.ops.ddts import ddts_chunk, ddts_naive, ddts_recurrent
from tests.helpers import assert_close

SHAPES = [  # B, T, H, K, V, chunk
    pytest.param(2, 63, 1, 16, 60, 16, id="B2-T63-H1-K16-V60-C16"),
    pytest.param(1, 1, 2, 8, 12, 32, id="B1-T1-H2-K8-V12-C32"),
    pytest.param(3, 40, 2, 5, 7, 8, id="B3-T40-H2-K5-V7-C8"),
    pytest.param(1, 100, 1, 4, 9, 64, id="B1-T100-H1-K4-V9-C64"),
]
FORMS = {
    "chunk": lambda *a, chunk, **kw: ddts_chunk(*a, chunk_size=chunk, **kw),
    "recurrent": lambda *a, chunk, **kw: ddts_recurrent(*a, **kw),
}


def make_inputs(B, T, H, K, V, dtype=torch.float64, seed=0, gate_scale=2.0):
    g = torch.Generator().manual_seed(seed)
    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()
    return (r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), r(B, T, H, K, scale=gate_scale), r(B, T, H, K)), r(B, H, K, V)


def run_with_grads(fn, inputs, h0, **kw):
    leaves = [t for t in (*inputs, h0) if t is not None]
    for t in leaves:
        t.grad = None
    o, s = fn(*inputs, initial_state=h0, **kw)
    g = torch.Generator().manual_seed(1)
    (o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum().backward(retain_graph=True)
    (s * torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.dtype)).sum().backward()
    return o, s, [t.grad.clone() for t in leaves]


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("B,T,H,K,V,chunk", SHAPES)
def test_matches_reference_fwd_bwd_float64(form, B, T, H, K, V, chunk):
    inputs, h0 = make_inputs(B, T, H, K, V)
    o_ref, s_ref, g_ref = run_with_grads(ddts_naive, inputs, h0)
    o, s, grads = run_with_grads(FORMS[form], inputs, h0, chunk=chunk)
    assert_close("o", o, o_ref, rel=1e-10)
    assert_close("final_state", s, s_ref, rel=1e-10)
    for name, a, e in zip(("dq", "dk", "dv", "dg", "dtau", "dh0"), grads, g_ref):
        assert_close(name, a, e, rel=1e-9)


@pytest.mark.parametrize("packed", [False, True], ids=["batch", "packed"])
def test_mixed_mild_and_strong_decay_chunks_fwd_bwd(packed):
    """Chunks that take the matmul form and chunks that need explicit pairwise decays, in one call."""
    inputs, h0 = make_inputs(1, 96, 2, 6, 5, seed=11, gate_scale=6.0)
    with torch.no_grad():
        inputs[3][:, :40] -= 8.0  # softplus(g_pre) ~ 0: mild chunks at the start
    h0, kw = (None, dict(cu_seqlens=torch.tensor([0, 30, 96]))) if packed else (h0, {})
    o_ref, s_ref, g_ref = run_with_grads(ddts_naive, inputs, h0, **kw)
    o, s, grads = run_with_grads(ddts_chunk, inputs, h0, chunk_size=16, **kw)
    assert_close("o", o, o_ref, rel=1e-10)
    assert_close("final_state", s, s_ref, rel=1e-10)
    for name, a, e in zip(("dq", "dk", "dv", "dg", "dtau", "dh0"), grads, g_ref):
        assert_close(name, a, e, rel=1e-9)


def test_gradcheck_chunk_float64():
    inputs, h0 = make_inputs(1, 11, 1, 3, 4, seed=3)
    assert torch.autograd.gradcheck(lambda *x: ddts_chunk(*x[:5], initial_state=x[5], chunk_size=4), (*inputs, h0))


def test_gradcheck_packed_chunk_float64():
    inputs, _ = make_inputs(1, 13, 1, 3, 4, seed=4)
    cu = torch.tensor([0, 5, 5, 13])
    assert torch.autograd.gradcheck(lambda *x: ddts_chunk(*x, chunk_size=4, cu_seqlens=cu), inputs)


@pytest.mark.parametrize("form", list(FORMS))
def test_float32_long_sequence(form):
    """T=2048 in float32: chunk and recurrent forms stay within 1e-4 of the float64 reference."""
    inputs, h0 = make_inputs(1, 2048, 1, 8, 16, dtype=torch.float32, seed=5)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref_h0 = h0.detach().double().requires_grad_()
    o_ref, s_ref, g_ref = run_with_grads(ddts_naive, ref_inputs, ref_h0)
    o, s, grads = run_with_grads(FORMS[form], inputs, h0, chunk=64)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert_close("o", o, o_ref, rel=1e-4)
    assert_close("final_state", s, s_ref, rel=1e-4)
    for name, a, e in zip(("dq", "dk", "dv", "dg", "dtau", "dh0"), grads, g_ref):
        assert_close(name, a, e, rel=1e-4)


@pytest.mark.parametrize("form", ["naive", "chunk", "recurrent"])
def test_packed_documents_equal_separate_runs(form):
    fn = {"naive": ddts_naive, "chunk": lambda *a, **k: ddts_chunk(*a, chunk_size=8, **k),
          "recurrent": ddts_recurrent}[form]
    inputs, _ = make_inputs(1, 45, 2, 4, 6, seed=6)
    cu = torch.tensor([0, 3, 3, 20, 21, 45])
    o, s = fn(*inputs, cu_seqlens=cu)
    assert s.shape == (5, 2, 4, 6)
    for i in range(5):
        a, b = int(cu[i]), int(cu[i + 1])
        if a == b:
            assert (s[i] == 0).all()
            continue
        o_i, s_i = ddts_naive(*[t[:, a:b] for t in inputs])
        assert_close(f"o[doc {i}]", o[:, a:b], o_i, rel=1e-10)
        assert_close(f"state[doc {i}]", s[i : i + 1], s_i, rel=1e-10)


@pytest.mark.parametrize("form", ["naive", "chunk", "recurrent"])
@pytest.mark.parametrize("cu", [None, [0, 9, 9, 30]], ids=["batch", "packed"])
def test_no_final_state_same_output_and_gradients(form, cu):
    """output_final_state=False (training) returns None for the state and changes nothing else."""
    fn = {"naive": ddts_naive, "chunk": lambda *a, **k: ddts_chunk(*a, chunk_size=8, **k),
          "recurrent": ddts_recurrent}[form]
    cu = torch.tensor(cu) if cu is not None else None
    inputs, h0 = make_inputs(1 if cu is not None else 2, 30, 2, 4, 6, seed=7)
    h0 = h0 if cu is None else None  # packed documents start from zeros
    w = torch.randn(*inputs[2].shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    results = []
    for want in (True, False):
        leaves = [t for t in (*inputs, h0) if t is not None]
        for t in leaves:
            t.grad = None
        o, s = fn(*inputs, initial_state=h0, cu_seqlens=cu, output_final_state=want)
        assert (s is None) == (not want)
        (o * w).sum().backward()
        results.append((o.detach(), [t.grad.clone() for t in leaves]))
    (o1, g1), (o2, g2) = results
    assert torch.equal(o1, o2) and len(g1) == len(g2) == 5 + (h0 is not None)
    for name, a, b in zip(("dq", "dk", "dv", "dg_pre", "dtau_pre", "dh0"), g1, g2, strict=False):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), name


def test_bf16_inputs_keep_float32_state_and_gates():
    inputs, h0 = make_inputs(2, 50, 1, 8, 16, dtype=torch.bfloat16, seed=7)
    o, s = ddts_chunk(*inputs, initial_state=h0.float(), chunk_size=16)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    o_ref, s_ref = ddts_naive(*[t.double() for t in inputs], initial_state=h0.double())
    assert_close("o", o, o_ref, rel=1e-2)
    assert_close("final_state", s, s_ref, rel=1e-4)


def test_100k_tokens_finite_and_equal_to_streaming():
    """A 100k-token float32 forward has no inf/NaN and matches the recurrent form fed in pieces."""
    T = 100_000
    inputs, _ = make_inputs(1, T, 1, 4, 8, dtype=torch.float32, seed=8, gate_scale=3.0)
    inputs = [t.detach() for t in inputs]
    with torch.no_grad():
        o, s = ddts_chunk(*inputs, chunk_size=64)
        assert torch.isfinite(o).all() and torch.isfinite(s).all()
        state, outs = None, []
        for a in range(0, T, 25_000):
            o_p, state = ddts_recurrent(*[t[:, a : a + 25_000] for t in inputs], initial_state=state)
            outs.append(o_p)
    assert_close("o", o, torch.cat(outs, 1), rel=1e-4)
    assert_close("final_state", s, state, rel=1e-4)


def test_chunk_pieces_with_initial_state_equal_whole():
    inputs, _ = make_inputs(2, 70, 1, 6, 5, seed=9)
    o, s = ddts_chunk(*inputs, chunk_size=16)
    o1, s1 = ddts_chunk(*[t[:, :33] for t in inputs], chunk_size=16)
    o2, s2 = ddts_chunk(*[t[:, 33:] for t in inputs], chunk_size=16, initial_state=s1)
    assert_close("o", torch.cat([o1, o2], 1), o, rel=1e-10)
    assert_close("final_state", s2, s, rel=1e-10)


def test_strong_decay_does_not_overflow():
    inputs, _ = make_inputs(1, 256, 1, 4, 4, dtype=torch.float32, seed=10, gate_scale=50.0)
    o, s = ddts_chunk(*[t.detach() for t in inputs], chunk_size=64)
    o_ref, _ = ddts_naive(*[t.detach().double() for t in inputs])
    assert torch.isfinite(o).all()
    assert_close("o", o, o_ref, rel=1e-4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(cu_seqlens=torch.tensor([0, 5])), "rise from 0 to T"),
        (dict(initial_state=torch.zeros(2, 1, 4, 4)), "initial_state must be"),
        (dict(chunk_size=0), "chunk_size"),
    ],
    ids=["bad-cu_seqlens", "bad-initial_state", "bad-chunk"],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    inputs, _ = make_inputs(1, 8, 1, 4, 4)
    with pytest.raises(ValueError, match=match):
        ddts_chunk(*[t.detach() for t in inputs], **kwargs)


def test_shape_mismatch_raises():
    inputs, _ = make_inputs(1, 8, 1, 4, 4)
    q, k, v, g, tau = [t.detach() for t in inputs]
    with pytest.raises(ValueError, match="k must have the shape of q"):
        ddts_naive(q, k[:, :4], v, g, tau)
