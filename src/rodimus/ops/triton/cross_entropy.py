"""Fused softmax cross-entropy of a block of logits, gradient written over the logits.

Same signature as :func:`rodimus.ops.softmax_xent.softmax_xent_grad_`. One program per row: a first
pass over the row's logits keeps a running max and sum of exponentials (the log-sum-exp), a second
writes softmax - onehot in the logits' own dtype. At 16K rows x 32K vocab in bf16 that is 3 GB moved
instead of the torch form's ~14 GB of float32 passes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rodimus.ops.softmax_xent import softmax_xent_grad_
from rodimus.ops.triton._common import INTERPRET


@triton.jit
def _xent_rows(L, TGT, LOSS, V, stride, BV: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = L + row * stride
    cols = tl.arange(0, BV)
    m = tl.full([], float("-inf"), tl.float32)
    s = tl.zeros([], dtype=tl.float32)
    for v0 in range(0, V, BV):
        x = tl.load(base + v0 + cols, mask=v0 + cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    tgt = tl.load(TGT + row)
    valid = (tgt >= 0) & (tgt < V)  # out-of-range targets read nothing and count as ignored
    picked = tl.load(base + tl.where(valid, tgt, 0)).to(tl.float32)
    tl.store(LOSS + row, tl.where(valid, lse - picked, 0.0))
    keep = tl.where(valid, 1.0, 0.0)
    for v0 in range(0, V, BV):
        msk = v0 + cols < V
        x = tl.load(base + v0 + cols, mask=msk, other=0.0).to(tl.float32)
        p = tl.exp(x - lse) - tl.where(v0 + cols == tgt, 1.0, 0.0)
        tl.store(base + v0 + cols, (p * keep).to(L.dtype.element_ty), mask=msk)


def softmax_xent_grad_triton_(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fused :func:`rodimus.ops.softmax_xent.softmax_xent_grad_` (same arguments and result)."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [n, V] and targets [n], got {tuple(logits.shape)}, {tuple(targets.shape)}")
    if logits.dtype == torch.float64 or logits.stride(-1) != 1:
        return softmax_xent_grad_(logits, targets)
    n, V = logits.shape
    loss = torch.empty(n, device=logits.device, dtype=torch.float32)
    if n:
        BV = min(triton.next_power_of_2(V), 128 if INTERPRET else 4096)
        _xent_rows[(n,)](logits, targets, loss, V, logits.stride(0), BV=BV, num_warps=8)
    return loss
