"""Elementwise gates: act(a) * x, the Rodimus input gate (sigmoid) and the SwiGLU FFN (silu).

The input gate's pre-activation is a rank-r product, a = xa W^T + b: :func:`low_rank_gate_mul` takes xa
itself, so a fused kernel forms a in registers instead of a GEMM writing [rows, width] for the gate to read.
"""

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


def check_low_rank_inputs(
    xa: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, x: torch.Tensor, w_down: torch.Tensor | None = None
) -> None:
    if w.dim() != 2 or w.shape != (x.shape[-1], xa.shape[-1]):
        raise ValueError(f"w must be [x width, rank] = [{x.shape[-1]}, {xa.shape[-1]}], got {tuple(w.shape)}")
    if xa.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"xa and x must have the same leading shape, got {tuple(xa.shape)} and {tuple(x.shape)}")
    if b is not None and b.shape != (x.shape[-1],):
        raise ValueError(f"b must be [{x.shape[-1]}], got {tuple(b.shape)}")
    if w_down is not None and w_down.shape != (xa.shape[-1], x.shape[-1]):
        raise ValueError(f"w_down must be [rank, x width] = [{xa.shape[-1]}, {x.shape[-1]}], got {tuple(w_down.shape)}")


def low_rank_gate_mul(xa: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Reference: sigmoid(xa W^T + b) * x, the pre-activation in xa's dtype as a linear layer makes it."""
    check_low_rank_inputs(xa, w, b, x)
    return gate_mul(F.linear(xa, w, b), x, "sigmoid")


def low_rank_gate_mul_backward(
    xa: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    x: torch.Tensor,
    du: torch.Tensor,
    w_down: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d a, d x, d xa = d a W) of :func:`low_rank_gate_mul`, a rebuilt from xa.

    d x is through the product only, or, given the down projection's weight ``w_down`` (xa = x W_down^T),
    x's whole gradient through the gate: du * sigmoid(a) + d xa W_down. The caller owns the rest: d W and
    d b from d a (it kept xa), d W_down from d xa.
    """
    check_low_rank_inputs(xa, w, b, x, w_down)
    da, dx = gate_mul_backward(F.linear(xa, w, b), x, du, "sigmoid")
    dxa = da.to(w.dtype) @ w
    if w_down is not None:
        acc = torch.promote_types(dx.dtype, torch.float32)
        dx = (dx.to(acc) + (dxa @ w_down).to(acc)).to(x.dtype)
    return da, dx, dxa
