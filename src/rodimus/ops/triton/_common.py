"""Shared Triton helpers: interpreter switch, low-precision dot, stable activations.

On a machine without CUDA the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``), so the
same kernels are tested by the CPU suite. The interpreter multiplies bfloat16 tiles as raw integers
(triton 3.9), so there :func:`mm` rounds operands to the low precision and multiplies in float32.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # must be set before any @triton.jit runs
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402  (ImportError here marks the backend unavailable)
import triton.language as tl  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_INTERP = tl.constexpr(INTERPRET)


def _interpret_stdlib() -> None:
    """Re-wrap triton.language's own @jit helpers (tl.sum, tl.cumsum, ...) for the interpreter.

    triton decides compiled-vs-interpreted when a function is decorated; if triton was imported
    before TRITON_INTERPRET was set (transformers imports it), its standard library stays compiled-only
    and every kernel calling it fails under the interpreter. Swapping them in place fixes that.
    """
    import sys

    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    wrapped: dict[int, InterpretedFunction] = {}
    for name, mod in list(sys.modules.items()):
        if mod is None or not name.startswith("triton.language"):
            continue
        for attr, obj in list(vars(mod).items()):
            if isinstance(obj, JITFunction) and not isinstance(obj, InterpretedFunction):
                setattr(mod, attr, wrapped.setdefault(id(obj), InterpretedFunction(obj.fn)))


if INTERPRET:
    _interpret_stdlib()


@triton.jit
def _tf32(x):
    # round a float32 tile to tf32's 10-bit mantissa (what the interpreter's float32 dot skips)
    bits = x.to(tl.float32).to(tl.int32, bitcast=True)
    return ((bits + 0x1000) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def mm_tf32(a, b, LOWP: tl.constexpr):
    """a @ b for a float32 operand that bf16 would round too coarsely: tf32 when LOWP, else exact."""
    if LOWP:
        if _INTERP:
            return tl.dot(_tf32(a), _tf32(b))
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32")
    return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def mm(a, b, LOWP: tl.constexpr):
    """a @ b with a float32 result: bf16 operands when LOWP, exact float32 otherwise."""
    if LOWP:
        if _INTERP:
            return tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32))
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def softplus(x):
    # max(x, 0) + log1p(exp(-|x|)), log1p by Goldberg's trick so tiny values keep their precision
    y = tl.exp(-tl.abs(x))
    u = 1.0 + y
    l1p = tl.where(u == 1.0, y, tl.log(u) * (y / (u - 1.0)))
    return tl.maximum(x, 0.0) + l1p


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _column_sum(P, out, R, N, BR: tl.constexpr, BN: tl.constexpr):
    cols = tl.program_id(0) * BN + tl.arange(0, BN)
    cm = cols < N
    acc = tl.zeros([BR, BN], tl.float32)
    for r0 in range(0, R, BR):
        rows = r0 + tl.arange(0, BR)
        acc += tl.load(P + rows.to(tl.int64)[:, None] * N + cols[None, :], mask=(rows < R)[:, None] & cm[None, :],
                       other=0.0).to(tl.float32)
    tl.store(out + cols, tl.sum(acc, axis=0).to(out.dtype.element_ty), mask=cm)


def column_sum(partials: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``partials.sum(0).to(dtype)`` for a kernel's per-program partial sums [R, N], in one launch.

    torch's column reduction plus its cast took ~13 us a weight gradient on an H200 (a few hundred per
    342M training step, docs/BENCHMARKS.md); the reference is that torch expression.
    """
    if partials.numel() == 0:
        return torch.zeros(partials.shape[1:], device=partials.device, dtype=dtype)
    p = partials.reshape(partials.shape[0], -1).contiguous()
    R, N = p.shape
    out = torch.empty(N, device=p.device, dtype=dtype)
    BN = 64
    _column_sum[(cdiv(N, BN),)](p, out, R, N, BR=32, BN=BN, num_warps=4)
    return out.view(partials.shape[1:])


def rows_view(t: torch.Tensor) -> torch.Tensor:
    """t as [rows, last dim] with unit column stride: a view when the layout allows (column slices of a
    wider projection need no copy; the kernels take the row stride), else a contiguous copy."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def head_rows_view(x: torch.Tensor) -> torch.Tensor:
    """[B, T, heads, D] as [B*T, heads, D] with unit column and D head stride: a view where the layout
    allows (column slices of a fused projection are read in place; the kernels take the row stride)."""
    B, T, H, D = x.shape
    if x.stride(-1) == 1 and (H == 1 or x.stride(-2) == D):
        try:
            return x.view(B * T, H, D)
        except RuntimeError:
            pass
    return x.contiguous().view(B * T, H, D)


cdiv = triton.cdiv  # grid sizes: ceil(a / b) for ints


def next_pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(n)))
