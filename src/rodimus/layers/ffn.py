"""SwiGLU feed-forward of Rodimus+ blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def ffn_hidden_size(d_model: int, expand_ratio: float) -> int:
    """Hidden width rounded up to a multiple of 8 (176 for d_model 128 at ratio 4/3)."""
    return int(-(-(d_model * expand_ratio) // 8) * 8)


class GatedMLP(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.fc = nn.Linear(d_model, 2 * hidden, bias=False)  # [value; gate]
        self.out_proj = nn.Linear(hidden, d_model, bias=False)
        self.out_proj.init_role = "out"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.fc(x).split(self.hidden, dim=-1)
        return self.out_proj(F.silu(g) * a)
