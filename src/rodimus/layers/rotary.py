"""Rotary position embedding, GPT-NeoX layout (the two halves of a head rotate together)."""

from __future__ import annotations

import torch
from torch import nn

from rodimus.ops.dispatch import get_op, resolve_backend

_INV_FREQ: dict[tuple[int, float, torch.device], torch.Tensor] = {}  # (dim, base, device) -> frequencies


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, base: float = 10000.0, kernel_backend: str = "auto") -> None:
        super().__init__()
        self.dim = dim
        self.base = base
        self.kernel_backend = kernel_backend

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        # Built on first use rather than stored as a buffer (meta-device loading would leave a buffer
        # uninitialised), then shared by every layer: no five small kernels per call.
        key = (self.dim, float(self.base), torch.device(device))
        freq = _INV_FREQ.get(key)
        if freq is None:
            with torch.inference_mode(False):  # a normal tensor, usable by training after serving
                steps = torch.arange(0, self.dim, 2, device=device, dtype=torch.float32)
                freq = _INV_FREQ[key] = 1.0 / self.base ** (steps / self.dim)
        return freq

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate x [B, T, heads, dim] at integer positions [T] (or [B, T])."""
        op = get_op("rotary", resolve_backend(self.kernel_backend, x.device.type))
        return op(x, positions, self.inv_freq(x.device))
