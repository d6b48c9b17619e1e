from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rodimus.eval.baselines.gla_op import gla_chunk, gla_recurrent


def _inputs(B=2, T=37, H=2, K=8, V=6, strength=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, T, H, K, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    log_a = F.logsigmoid(strength * torch.randn(B, T, H, K, generator=g, dtype=dtype))
    return q, k, v, log_a


@pytest.mark.parametrize("chunk_size", [1, 8, 16, 64])
def test_chunk_form_equals_recurrence(chunk_size):
    q, k, v, log_a = _inputs()
    s0 = torch.randn(2, 2, 8, 6, dtype=torch.float64)
    o_ref, s_ref = gla_recurrent(q, k, v, log_a, initial_state=s0)
    o, s = gla_chunk(q, k, v, log_a, initial_state=s0, chunk_size=chunk_size)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)


def test_strong_decay_does_not_overflow():
    q, k, v, log_a = _inputs(strength=1.0)
    o, s = gla_chunk(q, k, v, log_a * 200.0, chunk_size=32)  # decays down to exp(-hundreds) per step
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    o_ref, _ = gla_recurrent(q, k, v, log_a * 200.0)
    torch.testing.assert_close(o, o_ref)


def test_split_sequence_continues_from_the_state():
    q, k, v, log_a = _inputs()
    o_full, s_full = gla_chunk(q, k, v, log_a)
    o1, s1 = gla_chunk(q[:, :20], k[:, :20], v[:, :20], log_a[:, :20])
    o2, s2 = gla_chunk(q[:, 20:], k[:, 20:], v[:, 20:], log_a[:, 20:], initial_state=s1)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_full)
    torch.testing.assert_close(s2, s_full)


def test_chunk_form_gradients_pass_gradcheck():
    q, k, v, log_a = (t.requires_grad_() for t in _inputs(B=1, T=7, H=1, K=3, V=2))
    torch.autograd.gradcheck(lambda *a: gla_chunk(*a, chunk_size=3)[0], (q, k, v, log_a))


def test_shape_errors_are_clear():
    q, k, v, log_a = _inputs()
    with pytest.raises(ValueError, match="v must be"):
        gla_chunk(q, k, v[:, :5], log_a)
    with pytest.raises(ValueError, match="share one"):
        gla_chunk(q, k[..., :4], v, log_a)
