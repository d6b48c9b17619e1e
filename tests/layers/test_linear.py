"""split_linear against F.linear(...).split(...): values and gradients, with and without autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rodimus.layers.linear import split_linear
from tests.helpers import assert_close

SIZES = [24, 8, 16]


@pytest.mark.parametrize(
    "dtype,autocast,used",
    [
        pytest.param(torch.float64, False, (0, 1, 2), id="fp64-all-parts"),
        pytest.param(torch.float64, False, (0, 2), id="fp64-middle-part-unused"),
        pytest.param(torch.float32, True, (0, 1, 2), id="fp32-autocast-bf16"),
        pytest.param(torch.bfloat16, True, (1,), id="bf16-input-autocast-one-part"),
    ],
)
@pytest.mark.parametrize("pass_input", [False, True], ids=["", "pass-input"])
def test_matches_linear_then_split(dtype, autocast, used, pass_input):
    """``pass_input``: x is also read by another consumer through the passed-through output; dx is the
    sum of both shares (the projection's accumulated into the consumer's in place, or into a converted
    copy when the dtypes differ, as for a float32 x under bf16 autocast)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(sum(SIZES), 20, generator=g, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    x = torch.randn(2, 5, 20, generator=g).to(dtype)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    results = []
    def reference(x, w, sizes, pass_input):
        parts = F.linear(x, w).split(sizes, dim=-1)
        return (*parts, x) if pass_input else parts

    for fn in (split_linear, reference):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        with ctx:
            parts = fn(xr, wr, SIZES, pass_input)
        loss = sum((parts[i].double() * (i + 1)).sin().sum() for i in used)
        if pass_input:
            assert len(parts) == len(SIZES) + 1 and torch.equal(parts[-1], x)
            loss = loss + (parts[-1].double() * 3).cos().sum()
            parts = parts[:-1]
        loss.backward()
        results.append(([p.detach() for p in parts], xr.grad, wr.grad))
    (ours, dx, dw), (ref, dx_ref, dw_ref) = results
    tol = 1e-12 if dtype == torch.float64 else 1e-2
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert_close(f"part {i}", a, b, rel=tol)
    assert dx.dtype == x.dtype and dw.dtype == w.dtype
    assert_close("dx", dx, dx_ref, rel=tol)
    assert_close("dweight", dw, dw_ref, rel=tol)


def test_no_grad_is_plain_split():
    w, x = torch.randn(48, 20), torch.randn(3, 20)
    with torch.no_grad():
        parts = split_linear(x, w, SIZES)
    assert [p.shape[-1] for p in parts] == SIZES
    torch.testing.assert_close(torch.cat(parts, -1), F.linear(x, w))


def test_validation():
    with pytest.raises(ValueError, match="sum\\(sizes\\)=47"):
        split_linear(torch.randn(3, 20), torch.randn(48, 20), [24, 8, 15])


def test_split_project_calls_anything_but_a_plain_linear():
    """A wrapped or hooked projection (an adapter, a quantised layer) is called, not bypassed."""
    from torch import nn

    from rodimus.layers.linear import split_project

    lin = nn.Linear(20, 48, bias=False)
    x = torch.randn(3, 20, requires_grad=True)
    seen = []
    lin.register_forward_hook(lambda mod, args, out: seen.append(1) or out * 2)
    parts = split_project(lin, x, SIZES)
    assert seen and [p.shape[-1] for p in parts] == SIZES
    torch.testing.assert_close(torch.cat(parts, -1), 2 * F.linear(x, lin.weight))

    class Adapter(nn.Module):  # replaces the linear, as LoRA-style wrappers do
        def __init__(self, base):
            super().__init__()
            self.base, self.weight = base, base.weight

        def forward(self, x):
            return self.base(x) + 1.0

    plain = nn.Linear(20, 48, bias=False)
    out = torch.cat(split_project(Adapter(plain), x, SIZES), -1)
    torch.testing.assert_close(out, F.linear(x, plain.weight) + 1.0)
