"""GEMMs of low-precision operands into a float32 result (weight gradients of float32 parameters, sums
of products such as DDTS states).

Under autocast a weight gradient is formed in bf16 and then cast to the parameter's float32: a
weight-sized write, read and write again. cuBLAS can write (or accumulate into) the float32 result
directly; torch exposes that as the ``out_dtype`` GEMM overloads on CUDA. Elsewhere, or where the
installed torch lacks them, the product is cast as before.
"""

from __future__ import annotations

import torch


def mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool = False) -> torch.Tensor:
    """``out (+)= a @ b`` for a (possibly) wider ``out`` dtype; returns ``out``."""
    if a.dtype == out.dtype:
        return out.addmm_(a, b) if accumulate else torch.mm(a, b, out=out)
    if out.device.type == "cuda" and _dtype_out_gemm_ok(out.device.index or 0, a.dtype, out.dtype):
        if accumulate:
            return torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
        return torch.mm(a, b, out_dtype=out.dtype, out=out)
    prod = a @ b
    return out.add_(prod) if accumulate else out.copy_(prod)


def bmm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out = a @ b`` batched, for a (possibly) wider ``out`` dtype; returns ``out``. Without the
    ``out_dtype`` GEMM the operands are widened first (the sums stay in out's precision)."""
    if (
        a.dtype != out.dtype
        and out.device.type == "cuda"
        and _dtype_out_gemm_ok(out.device.index or 0, a.dtype, out.dtype, batched=True)
    ):
        return torch.bmm(a, b, out_dtype=out.dtype, out=out)
    return torch.bmm(a.to(out.dtype), b.to(out.dtype), out=out)


_PROBED: dict[tuple, bool] = {}


def _dtype_out_gemm_ok(device_index: int, in_dtype: torch.dtype, out_dtype: torch.dtype, batched: bool = False) -> bool:
    """The probe's answer, probed on first use; during CUDA-graph capture, where the probe cannot run (it
    reads a value back), the cast fallback unless an earlier eager call already probed."""
    key = (device_index, in_dtype, out_dtype, batched)
    if key not in _PROBED:
        if torch.cuda.is_current_stream_capturing():
            return False
        _PROBED[key] = _probe(*key)
    return _PROBED[key]


def _probe(device_index: int, in_dtype: torch.dtype, out_dtype: torch.dtype, batched: bool) -> bool:
    """Whether this torch and device run the ``out_dtype`` GEMMs (mm and addmm, or bmm) for these dtypes
    (checked by value)."""
    dev = torch.device("cuda", device_index)
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(2, 32, 16, device=dev, generator=g).to(in_dtype)
    b = torch.randn(2, 16, 8, device=dev, generator=g).to(in_dtype)
    want = a.to(out_dtype) @ b.to(out_dtype)
    try:
        if batched:  # into strided batches, as one head of several is written
            got = torch.empty(2, 2, 32, 8, device=dev, dtype=out_dtype)[:, 1]
            torch.bmm(a, b, out_dtype=out_dtype, out=got)
        else:  # a write, then an accumulation
            got = torch.mm(a[0], b[0], out_dtype=out_dtype, out=torch.empty(32, 8, device=dev, dtype=out_dtype))
            torch.addmm(got, a[0], b[0], out_dtype=out_dtype, out=got)
            want = 2 * want[0]
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return bool(torch.allclose(got, want, rtol=1e-2, atol=1e-2))
