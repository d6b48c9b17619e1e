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


def gate_mul_backward(
    a: torch.Tensor, x: torch.Tensor, dy: torch.Tensor, activation: str = "sigmoid"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d a, d x) of :func:`gate_mul` for the output gradient ``dy``, formed in float32 (or float64).

    For callers that recompute ``a`` in their own backward (the mixer's low-rank input gate) and so
    cannot let autograd differentiate gate_mul.
    """
    check_gate_inputs(a, x, activation)
    acc = torch.promote_types(torch.promote_types(a.dtype, x.dtype), torch.float32)
    af, xf, df = a.to(acc), x.to(acc), dy.to(acc)
    s = torch.sigmoid(af)
    if activation == "sigmoid":
        f, dfa = s, s * (1 - s)
    else:
        f, dfa = af * s, s * (1 + af * (1 - s))
    return (df * xf * dfa).to(a.dtype), (df * f).to(x.dtype)
