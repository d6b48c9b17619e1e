"""mm_into: a low-precision product written into (or added to) a float32 result."""

from __future__ import annotations

import pytest
import torch

from rodimus.ops.matmul import bmm_into, mm_into
from tests.helpers import assert_close

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("in_dtype", [torch.bfloat16, torch.float32], ids=["bf16-into-fp32", "fp32-into-fp32"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["write", "accumulate"])
def test_matches_cast_product(in_dtype, accumulate):
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(*s, generator=g).to(DEV, in_dtype) for s in ((40, 24), (24, 12)))
    start = torch.randn(40, 12, generator=g).to(DEV)
    out = start.clone()[:, :]  # float32
    got = mm_into(out, a, b, accumulate=accumulate)
    assert got is out and out.dtype == torch.float32
    want = a.double() @ b.double() + (start.double() if accumulate else 0)
    # without the out_dtype GEMM (CPU) a bf16 product is rounded to bf16 before the float32 write
    assert_close("out", out.cpu(), want.cpu(), rel=4e-3 if in_dtype == torch.bfloat16 else 1e-5)


def test_row_slice_of_a_wider_result():
    """The weight-gradient use: each part's product goes into its rows of one buffer."""
    a, b = torch.randn(6, 5, device=DEV).bfloat16(), torch.randn(5, 3, device=DEV).bfloat16()
    out = torch.zeros(10, 3, device=DEV)
    mm_into(out[2:8], a, b)
    assert not out[:2].any() and not out[8:].any()
    assert_close("rows", out[2:8].cpu(), (a.double() @ b.double()).cpu(), rel=4e-3)


@pytest.mark.parametrize("in_dtype", [torch.bfloat16, torch.float32], ids=["bf16-into-fp32", "fp32-into-fp32"])
def test_batched_product_into_a_slice(in_dtype):
    """bmm_into (the DDTS segments' end states, one head of several): float32 sums of the operands' exact
    products, written into strided batches of a wider buffer and nowhere else."""
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(*s, generator=g).to(DEV, in_dtype) for s in ((3, 16, 40), (3, 40, 24)))
    out = torch.zeros(5, 2, 16, 24, device=DEV)
    got = bmm_into(out[1:4, 1], a, b)
    assert got.data_ptr() == out[1:4, 1].data_ptr()
    assert not out[0].any() and not out[4].any() and not out[:, 0].any()
    # bf16 operands are exact in float32; only the float32 summation order differs from float64
    assert_close("out", out[1:4, 1].cpu(), (a.double() @ b.double()).cpu(), rel=1e-5)
