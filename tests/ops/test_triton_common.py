"""The shared Triton helpers (under the interpreter on CPU) against their torch expressions."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e .[triton])")

from rodimus.ops.triton._common import column_sum  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape", [(1, 5), (33, 70), (100, 3, 40), (0, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_column_sum_is_the_row_sum(shape, dtype):
    """column_sum(p, dtype) == p.sum(0).to(dtype): row counts past one 32-row block, ragged columns,
    trailing dimensions kept, and no rows at all (zeros)."""
    p = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(DEV)
    got = column_sum(p, dtype)
    want = p.double().sum(0)
    assert got.shape == want.shape and got.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=tol, atol=tol * max(1, shape[0]) ** 0.5)
