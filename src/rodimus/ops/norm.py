"""RMS normalisations, computed in float32 and returned in the input's dtype.

``gated_rms_norm`` is the Rodimus mixer's output stage, RMSNorm((o + d * x) * silu(gate)) * weight,
with the skip term folded in so a fused kernel can do the whole stage in one pass over the rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Reference RMSNorm: float32 inside, result in ``out_dtype`` (default x's dtype).

    A pre-norm's output only feeds projections, which under autocast run in a lower precision: writing
    it in that dtype saves the cast (a pass over the rows each way) that autocast would make.
    """
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(out_dtype or x.dtype)


def rms_norm_pass(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x, ...), x): a pre-norm whose input also continues the residual stream.

    The second output is x itself here (autograd sums the two gradients of x). A fused form returns it
    as its own output so that its backward receives both gradients and sums them in the same pass.
    """
    return rms_norm(x, weight, eps, out_dtype), x


def check_gated_norm_inputs(o, gate, weight, skip_x, skip_weight) -> None:
    D = o.shape[-1]
    if gate is not None and gate.shape != o.shape:
        raise ValueError(f"gate must have o's shape {tuple(o.shape)}, got {tuple(gate.shape)}")
    if weight.shape != (D,):
        raise ValueError(f"weight must be [D={D}], got {tuple(weight.shape)}")
    if (skip_x is None) != (skip_weight is None):
        raise ValueError("skip_x and skip_weight must be given together")
    if skip_x is not None and (skip_x.shape != o.shape or skip_weight.shape != (D,)):
        raise ValueError(
            f"skip_x must have o's shape {tuple(o.shape)} and skip_weight [D={D}], "
            f"got {tuple(skip_x.shape)} and {tuple(skip_weight.shape)}"
        )


def gated_rms_norm(
    o: torch.Tensor,
    gate: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    skip_x: torch.Tensor | None = None,
    skip_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference: RMSNorm((o + skip_weight * skip_x) * silu(gate)) * weight over the last dim.

    Without gate and skip it is :func:`rms_norm` (the fused kernels serve both).
    All math in float32 (float64 for float64 inputs); the result has o's dtype.
    """
    check_gated_norm_inputs(o, gate, weight, skip_x, skip_weight)
    acc = torch.float64 if o.dtype == torch.float64 else torch.float32
    m = o.to(acc)
    if skip_x is not None:
        m = m + skip_x.to(acc) * skip_weight.to(acc)
    z = m * F.silu(gate.to(acc)) if gate is not None else m
    y = z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.to(acc)).to(o.dtype)


def gated_rms_norm_backward(
    o: torch.Tensor,
    gate: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    skip_x: torch.Tensor | None,
    skip_weight: torch.Tensor | None,
    dy: torch.Tensor,
) -> tuple[torch.Tensor | None, ...]:
    """(y, do, dgate, dweight, dskip_x, dskip_weight): :func:`gated_rms_norm`'s output with its gradients
    for ``dy`` (None for an absent input).

    For callers that did not keep y and need it again in backward (a projection's weight gradient, see
    :func:`rodimus.layers.recompute.project_recomputed`): a fused form makes y and the gradients in one
    pass instead of re-running the forward first.
    """
    ins = [t.detach().requires_grad_() if t is not None else None for t in (o, gate, weight, skip_x, skip_weight)]
    with torch.enable_grad():
        y = gated_rms_norm(ins[0], ins[1], ins[2], eps, skip_x=ins[3], skip_weight=ins[4])
    present = [t for t in ins if t is not None]
    grads = iter(torch.autograd.grad(y, present, dy.to(y.dtype)))
    return (y.detach(), *[next(grads) if t is not None else None for t in ins])
