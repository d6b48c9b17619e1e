"""A projection whose output is split into parts (``[x; gate]``, ``[value; gate]``, ``[q; k; v]``).

``F.linear(h, w).split(sizes)`` costs a concatenation in backward: autograd joins the parts' gradients
into one [rows, sum(sizes)] tensor before the GEMMs (for the mixer's ``fc`` at d_inner 2048 that is
268 MB moved per layer and step). :func:`split_linear` keeps the forward's single GEMM and gives each
part's gradient to its own slice of the weight instead: dh = sum_i dy_i @ W_i accumulates inside the
GEMMs, dW_i is written into its rows of dW.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rodimus.layers.recompute import run_dtype
from rodimus.ops.matmul import mm_into


def plain_linear(*mods: nn.Module, allow_bias: bool = False) -> bool:
    """Whether these are plain ``nn.Linear`` modules (bias-free unless ``allow_bias``) without hooks, so their
    weights may be used directly (fused or split GEMMs). A module that wraps or replaces one (an adapter
    such as a LoRA layer, a quantised linear) or carries hooks must be called instead, or its extra work
    would be skipped."""
    return all(
        type(m) is nn.Linear
        and (allow_bias or m.bias is None)
        and not (m._forward_hooks or m._forward_pre_hooks)
        for m in mods
    )


def split_project(proj: nn.Module, x: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """``proj(x).split(sizes, dim=-1)``, through :func:`split_linear` when ``proj`` is a plain linear."""
    if plain_linear(proj):
        return split_linear(x, proj.weight, sizes)
    return proj(x).split(list(sizes), dim=-1)


def split_linear(
    x: torch.Tensor, weight: torch.Tensor, sizes: Sequence[int], pass_input: bool = False
) -> tuple[torch.Tensor, ...]:
    """``F.linear(x, weight).split(sizes, dim=-1)`` (same result, autocast included), cheaper to train.

    x: [..., K]; weight: [sum(sizes), K] (may be a concatenation of several projections' weights).
    ``pass_input``: x is appended to the parts, for x's other consumer to read instead of x. The backward
    then accumulates the projection's share of dx into that consumer's gradient, in place, inside the
    GEMMs (no separate sum of the two). Its consumer must make that gradient for it alone (a fresh tensor,
    as a norm's or a product's backward does), never pass on a gradient it also gives elsewhere.
    """
    sizes = tuple(int(s) for s in sizes)
    if weight.dim() != 2 or sum(sizes) != weight.shape[0] or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"split_linear: weight must be [sum(sizes)={sum(sizes)}, K={x.shape[-1]}], got {tuple(weight.shape)}"
        )
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        parts = F.linear(x, weight).split(sizes, dim=-1)
        return (*parts, x) if pass_input else parts
    return _SplitLinear.apply(x, weight, sizes, pass_input)


class _SplitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, sizes, pass_input):
        dt = run_dtype(x, weight)
        xd, wd = x.to(dt), weight.to(dt)
        with torch.autocast(x.device.type, enabled=False):
            y = F.linear(xd, wd)
        ctx.save_for_backward(xd, wd)  # the cast weight, as autocast's own linear keeps it
        ctx.sizes, ctx.x_dtype, ctx.w_dtype = sizes, x.dtype, weight.dtype
        ctx.set_materialize_grads(False)  # an unused part costs nothing in backward
        ctx.pass_input = pass_input
        parts = y.split(sizes, dim=-1)
        return (*parts, x) if pass_input else parts

    @staticmethod
    def backward(ctx, *grads):
        xd, wd = ctx.saved_tensors
        dt, K = xd.dtype, xd.shape[-1]
        x2 = xd.reshape(-1, K)
        dx_pass = grads[-1] if ctx.pass_input else None
        grads = grads[:-1] if ctx.pass_input else grads
        starts = [sum(ctx.sizes[:i]) for i in range(len(ctx.sizes))]
        parts = [
            (g.reshape(-1, n).to(dt), s, s + n)
            for g, s, n in zip(grads, starts, ctx.sizes, strict=True)
            if g is not None
        ]
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = _accumulator(dx_pass, x2)
            if dx is None and not parts:
                dx = torch.zeros_like(x2)
            for g2, s, e in parts:
                dx = g2 @ wd[s:e] if dx is None else dx.addmm_(g2, wd[s:e])
            dx = dx.view(xd.shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            dw = (torch.zeros_like if len(parts) < len(ctx.sizes) else torch.empty_like)(wd, dtype=ctx.w_dtype)
            for g2, s, e in parts:
                mm_into(dw[s:e], g2.t(), x2)
        return dx, dw, None, None


def _accumulator(dx_pass: torch.Tensor | None, x2: torch.Tensor) -> torch.Tensor | None:
    """The passed-through input's gradient as the [rows, K] buffer the GEMMs add into: itself when it
    already has the GEMMs' dtype and layout (the usual case), else a converted copy."""
    if dx_pass is None:
        return None
    if dx_pass.dtype == x2.dtype and dx_pass.is_contiguous():
        return dx_pass.view(x2.shape)
    return dx_pass.reshape(x2.shape).to(x2.dtype, memory_format=torch.contiguous_format, copy=True)
