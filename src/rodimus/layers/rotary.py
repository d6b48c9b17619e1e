"""Rotary position embedding, GPT-NeoX layout (the two halves of a head rotate together)."""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.dim = dim
        self.base = base

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        # Recomputed rather than stored: a buffer would be left uninitialised by meta-device loading.
        return 1.0 / self.base ** (torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) / self.dim)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate x [B, T, heads, dim] at integer positions [T] (or [B, T])."""
        freqs = positions.float()[..., None] * self.inv_freq(x.device)  # [.., T, dim/2]
        cos, sin = freqs.cos(), freqs.sin()
        if cos.dim() == 2:
            cos, sin = cos[None], sin[None]
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        xf = x.float()
        x1, x2 = xf[..., : self.dim // 2], xf[..., self.dim // 2 :]
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return out.to(x.dtype)
