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
    a: torch.Tensor, x: torch.Tensor, dy: torch.Tensor, activation: str = "sigmoid", with_output: bool = False
) -> tuple[torch.Tensor, ...]:
    """(d a, d x) of :func:`gate_mul` for the output gradient ``dy``, formed in float32 (or float64);
    ``with_output``: (d a, d x, gate_mul(a, x)).

    For callers that recompute ``a`` in their own backward (the mixer's low-rank input gate) and so
    cannot let autograd differentiate gate_mul, or that need the product again and did not keep it (the
    FFN's out projection, :func:`rodimus.layers.recompute.project_recomputed`).
    """
    check_gate_inputs(a, x, activation)
    acc = torch.promote_types(torch.promote_types(a.dtype, x.dtype), torch.float32)
    af, xf, df = a.to(acc), x.to(acc), dy.to(acc)
    s = torch.sigmoid(af)
    if activation == "sigmoid":
        f, dfa = s, s * (1 - s)
    else:
        f, dfa = af * s, s * (1 + af * (1 - s))
    grads = (df * xf * dfa).to(a.dtype), (df * f).to(x.dtype)
    return (*grads, gate_mul(a, x, activation)) if with_output else grads
