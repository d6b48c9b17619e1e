"""Blocked SW-SKA: queries in blocks, each against only the keys its window can reach.

Work and memory are O(T x (block + window)), never T x T, and the single key head is broadcast
against the H query heads rather than repeated.
"""

from __future__ import annotations

import torch

from rodimus.ops.ddts.common import acc_dtype
from rodimus.ops.packing import seq_index
from rodimus.ops.swska.common import band_mask, check_swska_inputs, masked_softmax


def swska_blocked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int,
    scale: float | None = None,
    key_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    block_size: int | None = None,
) -> torch.Tensor:
    """Same arguments and result as :func:`rodimus.ops.swska.swska_naive`; ``block_size`` queries per step."""
    check_swska_inputs(q, k, v, window, key_mask, cu_seqlens)
    B, T, H, D = q.shape
    S = k.shape[1]
    scale = D**-0.5 if scale is None else scale
    block = block_size or max(64, window)
    acc = acc_dtype(q)
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    doc = seq_index(cu_seqlens, T) if cu_seqlens is not None else None
    pos = torch.arange(S, device=q.device)
    outs = []
    for t0 in range(0, T, block):
        t1 = min(t0 + block, T)
        p0, p1 = S - T + t0, S - T + t1  # absolute positions of this query block
        k0 = max(0, p0 - window)
        scores = torch.einsum("bthd,bsd->bhts", qa[:, t0:t1], ka[:, k0:p1]) * scale
        km = key_mask[:, k0:p1] if key_mask is not None else None
        mask = band_mask(pos[p0:p1], pos[k0:p1], window, km, doc)[:, None]
        p = masked_softmax(scores, mask)
        outs.append(torch.einsum("bhts,bshd->bthd", p, va[:, k0:p1]))
    return torch.cat(outs, 1).to(q.dtype)
