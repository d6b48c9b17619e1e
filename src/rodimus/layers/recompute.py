"""proj(f(inputs)) without keeping f's output for backward.

A projection's weight gradient needs its input, so autograd keeps the output of the elementwise or
row-wise stage before it (the mixer's gated norm, the FFN's SwiGLU product): one [rows, width] tensor per
layer. When that stage is cheap and its inputs are kept anyway, recomputing it in backward costs one
extra pass and saves the tensor (the projection's GEMM is not recomputed, unlike with checkpointing).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def project_recomputed(fn: Callable[..., torch.Tensor], proj: nn.Linear, *inputs: torch.Tensor | None) -> torch.Tensor:
    """``proj(fn(*inputs))``; in training ``fn``'s output is recomputed in backward instead of kept."""
    if proj.bias is not None or not (torch.is_grad_enabled() and any(_needs_grad(t) for t in inputs)):
        return proj(fn(*inputs))
    return _RecomputeThenProject.apply(fn, proj.weight, *inputs)


def _needs_grad(t: torch.Tensor | None) -> bool:
    return t is not None and t.requires_grad


class _RecomputeThenProject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, proj_w, *inputs):
        dev = proj_w.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else proj_w.dtype
        with torch.no_grad(), torch.autocast(dev, enabled=False):
            out = F.linear(fn(*inputs).to(dtype), proj_w.to(dtype))
        ctx.save_for_backward(proj_w, *inputs)
        ctx.fn, ctx.dtype = fn, dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        proj_w, *ins = ctx.saved_tensors
        ins = [t.detach().requires_grad_(t.requires_grad) if t is not None else None for t in ins]
        dtype = ctx.dtype
        with torch.enable_grad(), torch.autocast(proj_w.device.type, enabled=False):
            y = ctx.fn(*ins)
        d = dout.to(dtype).reshape(-1, dout.shape[-1])
        d_proj = None
        if proj_w.requires_grad:
            d_proj = (d.t() @ y.detach().to(dtype).reshape(-1, y.shape[-1])).to(proj_w.dtype)
        dy = (d @ proj_w.to(dtype)).view(y.shape).to(y.dtype)
        wanted = [t for t in ins if _needs_grad(t)]
        got = iter(torch.autograd.grad(y, wanted, dy) if wanted else ())
        return (None, d_proj, *[next(got) if _needs_grad(t) else None for t in ins])
