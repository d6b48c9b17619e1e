"""RMSNorm modules; the math is :mod:`rodimus.ops.norm` (fused Triton form on CUDA for the gated one)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rodimus.ops.dispatch import get_op, resolve_backend
from rodimus.ops.norm import rms_norm

__all__ = ["GatedRMSNorm", "RMSNorm", "rms_norm"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, kernel_backend: str = "auto") -> None:
        super().__init__()
        self.eps = eps
        self.kernel_backend = kernel_backend
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return get_op("rms_norm", resolve_backend(self.kernel_backend, x.device.type))(x, self.weight, self.eps)


class GatedRMSNorm(RMSNorm):
    """RMSNorm((x + skip_weight * skip_x) * silu(gate)): Rodimus normalises after gating."""

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        gate: torch.Tensor,
        skip_x: torch.Tensor | None = None,
        skip_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        op = get_op("gated_norm", resolve_backend(self.kernel_backend, x.device.type))
        return op(x, gate, self.weight, self.eps, skip_x=skip_x, skip_weight=skip_weight)

    def project(
        self,
        x: torch.Tensor,
        gate: torch.Tensor,
        proj: nn.Linear,
        skip_x: torch.Tensor | None = None,
        skip_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """proj(self(x, gate, skip_x, skip_weight)); in training the normalised tensor is recomputed in
        backward (one cheap row-wise pass) instead of being kept for the projection's weight gradient."""
        args = (x, gate, self.weight, skip_x, skip_weight)
        if proj.bias is not None or not (torch.is_grad_enabled() and any(_needs_grad(t) for t in args)):
            return proj(self(x, gate, skip_x, skip_weight))
        op, eps = get_op("gated_norm", resolve_backend(self.kernel_backend, x.device.type)), self.eps

        def norm(x, gate, w, skip_x, skip_w):
            return op(x, gate, w, eps, skip_x=skip_x, skip_weight=skip_w)

        return _NormThenProject.apply(norm, proj.weight, *args)


def _needs_grad(t: torch.Tensor | None) -> bool:
    return t is not None and t.requires_grad


class _NormThenProject(torch.autograd.Function):
    """F.linear(norm(...), W) keeping only the norm's inputs (which other ops keep anyway)."""

    @staticmethod
    def forward(ctx, norm, proj_w, x, gate, w, skip_x, skip_w):
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else proj_w.dtype
        with torch.no_grad(), torch.autocast(dev, enabled=False):
            y = norm(x, gate, w, skip_x, skip_w)
            out = F.linear(y.to(dtype), proj_w.to(dtype))
        ctx.save_for_backward(proj_w, x, gate, w, skip_x, skip_w)
        ctx.norm, ctx.dtype = norm, dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        proj_w, *ins = ctx.saved_tensors
        ins = [t.detach().requires_grad_(t.requires_grad) if t is not None else None for t in ins]
        x, gate, w, skip_x, skip_w = ins
        norm, dtype = ctx.norm, ctx.dtype
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            y = norm(x, gate, w, skip_x, skip_w)
        d = dout.to(dtype).reshape(-1, dout.shape[-1])
        y2 = y.detach().to(dtype).reshape(-1, y.shape[-1])
        d_proj = (d.t() @ y2).to(proj_w.dtype) if proj_w.requires_grad else None
        dy = (d @ proj_w.to(dtype)).view(y.shape).to(y.dtype)
        wanted = [t for t in ins if _needs_grad(t)]
        got = iter(torch.autograd.grad(y, wanted, dy) if wanted else ())
        grads = [next(got) if _needs_grad(t) else None for t in ins]
        return (None, d_proj, *grads)
