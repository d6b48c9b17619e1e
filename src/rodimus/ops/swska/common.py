"""Argument checks and masks shared by the SW-SKA forms."""

from __future__ import annotations

import torch


def check_swska_inputs(q, k, v, window, key_mask, cu_seqlens) -> None:
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, D], got shape {tuple(q.shape)}")
    B, T, H, D = q.shape
    if k.dim() != 3 or k.shape[0] != B or k.shape[2] != D:
        raise ValueError(f"k must be [B, S, D] with B={B}, D={D} (one shared key head), got {tuple(k.shape)}")
    S = k.shape[1]
    if v.shape != (B, S, H, v.shape[-1]):
        raise ValueError(f"v must be [B, S={S}, H={H}, Dv], got {tuple(v.shape)}")
    if S < T:
        raise ValueError(f"there must be at least as many keys as queries, got S={S} < T={T}")
    if not isinstance(window, int) or window < 0:
        raise ValueError(f"window (previous tokens visible) must be an int >= 0, got {window!r}")
    if key_mask is not None and key_mask.shape != (B, S):
        raise ValueError(f"key_mask must be [B, S] = {(B, S)}, got {tuple(key_mask.shape)}")
    if cu_seqlens is not None and (B != 1 or S != T):
        raise ValueError("cu_seqlens needs a packed batch (B = 1) and no cached keys (S = T)")


def band_mask(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    window: int,
    key_mask: torch.Tensor | None,
    doc: torch.Tensor | None,
) -> torch.Tensor:
    """[B or 1, Tq, Tk] bool: key j visible to query i."""
    rel = q_pos[:, None] - k_pos[None, :]
    mask = ((rel >= 0) & (rel <= window))[None]
    if key_mask is not None:
        mask = mask & key_mask[:, None, :].bool()
    if doc is not None:
        mask = mask & (doc[q_pos][:, None] == doc[k_pos][None, :])[None]
    return mask


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim; rows with no visible key give all zeros (not NaN)."""
    scores = scores.masked_fill(~mask, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    p = torch.exp(scores - top)
    return p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
