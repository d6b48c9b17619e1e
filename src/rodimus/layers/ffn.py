"""SwiGLU feed-forward of Rodimus+ blocks."""

from __future__ import annotations

import torch
from torch import nn

from rodimus.layers.linear import split_project
from rodimus.layers.recompute import project_recomputed
from rodimus.ops.dispatch import get_op, resolve_backend


def ffn_hidden_size(d_model: int, expand_ratio: float) -> int:
    """Hidden width rounded up to a multiple of 8 (176 for d_model 128 at ratio 4/3)."""
    return int(-(-(d_model * expand_ratio) // 8) * 8)


class GatedMLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, kernel_backend: str = "auto") -> None:
        super().__init__()
        self.hidden = hidden
        self.kernel_backend = kernel_backend
        self.fc = nn.Linear(d_model, 2 * hidden, bias=False)  # [value; gate]
        self.out_proj = nn.Linear(hidden, d_model, bias=False)
        self.out_proj.init_role = "out"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = split_project(self.fc, x, [self.hidden, self.hidden])
        backend = resolve_backend(self.kernel_backend, x.device.type)
        gate_mul, gate_mul_backward = get_op("gate_mul", backend), get_op("gate_mul_backward", backend)

        def backward(g, a, dy):  # the product for the out projection's weight gradient, from the same pass
            dg, da, y = gate_mul_backward(g, a, dy, "silu", with_output=True)
            return y, dg, da

        return project_recomputed(lambda g, a: gate_mul(g, a, "silu"), self.out_proj, g, a, backward=backward)
