"""RMSNorm modules; the math is :mod:`rodimus.ops.norm` (fused Triton form on CUDA for the gated one)."""

from __future__ import annotations

import torch
from torch import nn

from rodimus.layers.recompute import project_recomputed
from rodimus.ops.dispatch import get_op, resolve_backend
from rodimus.ops.norm import rms_norm

__all__ = ["GatedRMSNorm", "RMSNorm", "rms_norm"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, kernel_backend: str = "auto") -> None:
        super().__init__()
        self.eps = eps
        self.kernel_backend = kernel_backend
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """``out_dtype`` (default x's dtype): the dtype the next layer computes in."""
        op = get_op("rms_norm", resolve_backend(self.kernel_backend, x.device.type))
        return op(x, self.weight, self.eps, out_dtype)

    def forward_and_pass(
        self, x: torch.Tensor, out_dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(x), x) for a pre-norm whose input goes on as the residual: continue the stream with the
        second output and the fused backward adds the residual's gradient to the norm's in its own pass
        (autograd would sum the two in a separate one)."""
        op = get_op("rms_norm_pass", resolve_backend(self.kernel_backend, x.device.type))
        return op(x, self.weight, self.eps, out_dtype)


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
        """proj(self(x, gate, skip_x, skip_weight)); in training the normalised tensor is not kept for the
        projection's weight gradient: the norm's backward kernel remakes it while forming its gradients."""
        backend, eps = resolve_backend(self.kernel_backend, x.device.type), self.eps
        op, op_bwd = get_op("gated_norm", backend), get_op("gated_norm_backward", backend)

        def norm(x, gate, w, skip_x, skip_w):
            return op(x, gate, w, eps, skip_x=skip_x, skip_weight=skip_w)

        def norm_backward(x, gate, w, skip_x, skip_w, dy):
            return op_bwd(x, gate, w, eps, skip_x, skip_w, dy)

        return project_recomputed(norm, proj, x, gate, self.weight, skip_x, skip_weight, backward=norm_backward)
