"""Rotary position embedding (GPT-NeoX layout: a head's two halves rotate together) as a pure op."""

from __future__ import annotations

import torch


def check_rotary_inputs(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"x must be [B, T, heads, dim] with an even dim, got {tuple(x.shape)}")
    B, T, _, D = x.shape
    if positions.shape not in ((T,), (B, T)):
        raise ValueError(f"positions must be [T] or [B, T] = {(B, T)}, got {tuple(positions.shape)}")
    if inv_freq.shape != (D // 2,):
        raise ValueError(f"inv_freq must be [dim / 2] = [{D // 2}], got {tuple(inv_freq.shape)}")


def rotary(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Reference: x [B, T, heads, dim] rotated by angles positions [T] or [B, T] x inv_freq, in float32."""
    check_rotary_inputs(x, positions, inv_freq)
    freqs = positions.float()[..., None] * inv_freq.float()  # [.., T, dim/2]
    cos, sin = freqs.cos(), freqs.sin()
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    xf = x.float()
    half = x.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
