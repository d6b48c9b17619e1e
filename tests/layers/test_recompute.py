"""RebuildSaved: a registered activation is rebuilt once in backward instead of kept, same gradients."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from rodimus.layers.recompute import RebuildSaved
from tests.helpers import assert_close


def _two_consumers(x, w, rebuild: bool, calls: list):
    def make():
        calls.append(1)
        return torch.tanh(x)

    with RebuildSaved() as saved:
        y = torch.tanh(x)
        if rebuild:
            saved.register(y, make)
        a = (y * w).sum()  # mul keeps y (for dw) and w
        b = torch.sin(y).sum()  # sin keeps y
        return a + b


def test_rebuilt_once_with_the_same_gradients():
    g = torch.Generator().manual_seed(0)
    x0, w0 = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    grads, calls = [], []
    for rebuild in (False, True):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        _two_consumers(x, w, rebuild, calls).backward()
        grads.append((x.grad, w.grad))
    assert len(calls) == 1  # both consumers share one rebuild
    for name, a, b in zip(("dx", "dw"), *grads, strict=True):
        assert_close(name, a, b, rel=1e-15)


def test_inactive_under_other_saved_tensor_hooks():
    """Inside activation checkpointing the checkpoint's hooks see every tensor; ours stay out."""
    x, w, calls = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True), []
    checkpoint(lambda x, w: _two_consumers(x, w, True, calls), x, w, use_reentrant=False).backward()
    assert not calls and x.grad is not None


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_mixer_gradients_unchanged(backend, monkeypatch):
    """The Rodimus mixer with x' rebuilt in backward gives the gradients of keeping it."""
    if backend == "triton":
        pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e .[triton])")
    from rodimus.layers.mixer import RodimusMixer

    dev = "cuda" if torch.cuda.is_available() and backend == "triton" else "cpu"
    torch.manual_seed(0)
    mixer = RodimusMixer(32, 64, 16, 8, 4, 1e-6, 1e-5, 0, kernel_backend=backend).to(dev)
    h = torch.randn(1, 37, 32, device=dev)
    cu = torch.tensor([0, 10, 37], dtype=torch.int32, device=dev)
    from rodimus.layers import recompute

    rebuilt = []
    get = recompute._Rebuilt.get
    monkeypatch.setattr(recompute._Rebuilt, "get", lambda self: rebuilt.append(1) or get(self))
    results = []
    for rebuild in (True, False):
        if not rebuild:
            monkeypatch.setattr(RebuildSaved, "register", lambda self, t, fn: None)
        mixer.zero_grad()
        hr = h.clone().requires_grad_()
        mixer(hr, cu_seqlens=cu).square().sum().backward()
        results.append([hr.grad] + [p.grad.clone() for p in mixer.parameters()])
    assert len(rebuilt) >= 2  # the q/k (and gate) projections and the gated norm each asked for x'
    names = ["dh"] + [n for n, _ in mixer.named_parameters()]
    for name, a, b in zip(names, *results, strict=True):
        assert_close(name, a, b, rel=1e-6)
