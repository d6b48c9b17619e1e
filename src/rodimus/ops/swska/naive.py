"""SW-SKA reference: full T x S scores with an explicit band mask and the key repeated per head."""

from __future__ import annotations

import torch

from rodimus.ops.ddts.common import acc_dtype
from rodimus.ops.packing import seq_index
from rodimus.ops.swska.common import band_mask, check_swska_inputs, masked_softmax


def swska_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int,
    scale: float | None = None,
    key_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sliding-window attention with one shared key head.

    Args:
        q: [B, T, H, D] queries for the last T of the S key positions.
        k: [B, S, D], the single key head; v: [B, S, H, Dv].
        window: how many previous tokens a query sees besides itself (official window_size // 2).
        scale: score scale, 1/sqrt(D) when None.
        key_mask: [B, S] bool/0-1, False for padding keys.
        cu_seqlens: [N + 1] packed document offsets (B = 1, S = T): no attention across documents.
    Returns:
        o: [B, T, H, Dv] in q's dtype; a query with no visible key gives zeros.
    """
    check_swska_inputs(q, k, v, window, key_mask, cu_seqlens)
    B, T, H, D = q.shape
    S = k.shape[1]
    scale = D**-0.5 if scale is None else scale
    acc = acc_dtype(q)
    k_rep = k[:, :, None, :].expand(B, S, H, D).to(acc)
    scores = torch.einsum("bthd,bshd->bhts", q.to(acc), k_rep) * scale
    doc = seq_index(cu_seqlens, T) if cu_seqlens is not None else None
    pos = torch.arange(S, device=q.device)
    mask = band_mask(pos[S - T :], pos, window, key_mask, doc)[:, None]
    p = masked_softmax(scores, mask)
    return torch.einsum("bhts,bshd->bthd", p, v.to(acc)).to(q.dtype)
