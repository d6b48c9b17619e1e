"""Elementwise gates: act(a) * x, the Rodimus input gate (sigmoid) and the SwiGLU FFN (silu)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("sigmoid", "silu")


def check_gate_inputs(a: torch.Tensor, x: torch.Tensor, activation: str) -> None:
    if a.shape != x.shape:
        raise ValueError(f"a and x must have the same shape, got {tuple(a.shape)} and {tuple(x.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def gate_mul(a: torch.Tensor, x: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """Reference: act(a) * x in the inputs' (promoted) dtype, as the published layers compute it."""
    check_gate_inputs(a, x, activation)
    return (torch.sigmoid(a) if activation == "sigmoid" else F.silu(a)) * x
