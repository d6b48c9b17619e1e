"""The mixer calls a wrapped projection (an adapter) rather than reading its weight, on every path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rodimus.layers.mixer import RodimusMixer


class _Shift(nn.Module):
    """Stands in for a LoRA-style wrapper: the base linear plus extra work the fused paths must not skip."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base, self.weight, self.bias = base, base.weight, base.bias

    def forward(self, x):
        return self.base(x) + 0.5


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("proj", ["mem_gate_proj", "in_proj"])
def test_wrapped_projection_is_called(proj, autocast):
    torch.manual_seed(0)
    mixer = RodimusMixer(32, 64, 16, 8, 4, 1e-6, 1e-5, 0, kernel_backend="torch")
    x = torch.randn(2, 9, 32)
    inner = mixer.inner_mixer
    base = getattr(inner, proj)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        plain = mixer(x)
        calls = []
        wrapped = _Shift(base)
        wrapped.register_forward_hook(lambda *a: calls.append(1))
        setattr(inner, proj, wrapped)
        shifted = mixer(x)
    assert calls, f"{proj} was bypassed (autocast={autocast})"
    assert not torch.allclose(plain.float(), shifted.float())
    # The wrapper's result is what the model sees: a plain linear with the shift folded into its bias.
    folded = nn.Linear(base.in_features, base.out_features, bias=True)
    with torch.no_grad():
        folded.weight.copy_(base.weight)
        folded.bias.copy_((base.bias if base.bias is not None else 0) + 0.5)
    setattr(inner, proj, folded)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        expect = mixer(x)
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shifted.float(), expect.float(), **tol)
