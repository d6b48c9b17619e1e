"""Stages whose [rows, width] intermediates are recomputed in backward instead of kept.

A projection's weight gradient needs its input, so autograd keeps the output of the elementwise or
row-wise stage before it (the mixer's gated norm, the FFN's SwiGLU product): one [rows, width] tensor per
layer. When that stage is cheap and its inputs are kept anyway, recomputing it in backward costs one
extra pass and saves the tensor (the projection's GEMM is not recomputed, unlike with checkpointing).
The mixer's low-rank input gate is the same idea the other way round (:func:`low_rank_gate`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rodimus.ops.dispatch import get_op
from rodimus.ops.matmul import mm_into


def project_recomputed(
    fn: Callable[..., torch.Tensor],
    proj: nn.Linear,
    *inputs: torch.Tensor | None,
    backward: Callable[..., tuple[torch.Tensor | None, ...]] | None = None,
) -> torch.Tensor:
    """``proj(fn(*inputs))``; in training ``fn``'s output is recomputed in backward instead of kept.

    ``backward(*inputs, dy)``, if given, returns ``(fn(*inputs), *input_gradients)`` in one go (a fused
    kernel makes y while it forms the gradients, instead of a forward pass before them).
    """
    if proj.bias is not None or not (torch.is_grad_enabled() and any(_needs_grad(t) for t in inputs)):
        return proj(fn(*inputs))
    return _RecomputeThenProject.apply(fn, backward, proj.weight, *inputs)


def _needs_grad(t: torch.Tensor | None) -> bool:
    return t is not None and t.requires_grad


class _RecomputeThenProject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, fused_backward, proj_w, *inputs):
        dev = proj_w.device.type
        dtype = run_dtype(proj_w, proj_w)
        with torch.no_grad(), torch.autocast(dev, enabled=False):
            y = fn(*inputs)
            out = F.linear(y.to(dtype), proj_w.to(dtype))
        ctx.save_for_backward(proj_w, *inputs)  # the parameter itself: its cast would be one more copy kept
        ctx.fn, ctx.fused_backward, ctx.dtype, ctx.y_meta = fn, fused_backward, dtype, (y.shape, y.dtype)
        return out

    @staticmethod
    def backward(ctx, dout):
        proj_w, *ins = ctx.saved_tensors
        dtype = ctx.dtype
        d = dout.to(dtype).reshape(-1, dout.shape[-1])
        y_shape, y_dtype = ctx.y_meta
        dy = (d @ proj_w.to(dtype)).view(y_shape).to(y_dtype)
        with torch.autocast(proj_w.device.type, enabled=False):
            if ctx.fused_backward is not None:
                y, *grads = ctx.fused_backward(*ins, dy)
                grads = [g if _needs_grad(t) else None for g, t in zip(grads, ins, strict=True)]
            else:
                y, grads = _recompute_and_differentiate(ctx.fn, ins, dy)
        d_proj = None
        if proj_w.requires_grad:
            d_proj = mm_into(torch.empty_like(proj_w), d.t(), y.detach().to(dtype).reshape(-1, y.shape[-1]))
        return (None, None, d_proj, *grads)


def _recompute_and_differentiate(fn, ins, dy):
    ins = [t.detach().requires_grad_(t.requires_grad) if t is not None else None for t in ins]
    with torch.enable_grad():
        y = fn(*ins)
    wanted = [t for t in ins if _needs_grad(t)]
    got = iter(torch.autograd.grad(y, wanted, dy) if wanted else ())
    return y, [next(got) if _needs_grad(t) else None for t in ins]


class _Rebuilt:
    """Stands in for a saved tensor; the first unpack rebuilds it, later ones (other consumers) share it."""

    def __init__(self, fn: Callable[[], torch.Tensor], requires_grad: bool) -> None:
        self.fn, self.requires_grad, self.value = fn, requires_grad, None

    def get(self) -> torch.Tensor:
        if self.value is None:
            with torch.no_grad():
                self.value = self.fn().requires_grad_(self.requires_grad)
        return self.value


class _RebuiltView:
    """One saved view (shape, strides) of a rebuilt tensor."""

    def __init__(self, rebuilt: _Rebuilt, t: torch.Tensor) -> None:
        self.rebuilt, self.shape, self.stride = rebuilt, t.shape, t.stride()

    def get(self) -> torch.Tensor:
        return self.rebuilt.get().as_strided(self.shape, self.stride)


class RebuildSaved:
    """A block inside which autograd keeps a recipe instead of each :meth:`register`-ed tensor.

    Wherever an op in the block saves a registered tensor for backward, ``fn`` is saved instead; backward
    calls ``fn()`` (no grad) once and every consumer gets that result. For an activation several ops keep
    that is cheap to rebuild from tensors kept anyway: the mixer's short-conv output x' (one pass over the
    rows from the conv input; 64 MiB per 342M layer at 16K tokens, kept by the q/k/gate projections and
    the gated norm). ``fn`` must reproduce the tensor exactly (same kernels, inputs unchanged).

    Inactive (tensors saved as usual) where other saved-tensor hooks are already set, e.g. inside
    activation checkpointing, whose own hooks must see every tensor, and under torch.compile.
    """

    def __init__(self) -> None:
        self.rules: dict[tuple, _Rebuilt] = {}  # (data_ptr, numel, dtype) of a contiguous tensor
        self._hooks = None

    def register(self, t: torch.Tensor, fn: Callable[[], torch.Tensor]) -> None:
        """``fn()`` must return t's values as a fresh contiguous tensor; views of t saved by ops (a linear
        keeps its input flattened to rows) are rebuilt as the same views of it."""
        if self._hooks is not None and t.requires_grad and t.is_contiguous():
            self.rules[_key(t)] = _Rebuilt(fn, t.requires_grad)

    def __enter__(self) -> RebuildSaved:
        if torch.compiler.is_compiling() or not torch.is_grad_enabled():
            return self  # torch.compile's own partitioner decides what to keep and what to recompute
        top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", lambda _: None)
        if top(False) is None:
            self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
            self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._hooks is not None:
            self._hooks.__exit__(*exc)
            self._hooks = None
        self.rules = {}

    def _pack(self, t: torch.Tensor):
        rebuilt = self.rules.get(_key(t)) if self.rules and t.is_contiguous() else None
        return _RebuiltView(rebuilt, t) if rebuilt is not None else t

    @staticmethod
    def _unpack(x):
        return x.get() if isinstance(x, _RebuiltView) else x


def _key(t: torch.Tensor) -> tuple:
    return t.data_ptr(), t.numel(), t.dtype


def low_rank_gate(x: torch.Tensor, down: nn.Linear, up: nn.Linear, backend: str) -> torch.Tensor:
    """``sigmoid(up(down(x))) * x`` (the Rodimus input gate); in training the [rows, width] pre-activation
    is rebuilt in backward from the rank-r ``down(x)``, which is kept (a few bytes per row).

    Unlike checkpointing it does not re-run ``down`` (a pass over x) nor the gate product in backward.
    The up projection is part of the gate op (:func:`rodimus.ops.gating.low_rank_gate_mul`), so with the
    Triton kernels the pre-activation never reaches memory, and the two paths of dx meet inside that op's
    backward pass instead of a GEMM adding into it. Projections that are not plain linears (an adapter, a
    quantised linear, hooks) are called as they are, with autograd's backward.
    """
    from rodimus.layers.linear import plain_linear  # linear.py imports run_dtype from here

    if not plain_linear(down, up, allow_bias=True):
        return get_op("gate_mul", backend)(up(down(x)), x, "sigmoid")
    params = (down.weight, down.bias, up.weight, up.bias)
    if not (torch.is_grad_enabled() and any(_needs_grad(t) for t in (x, *params))):
        return _low_rank_forward(x, *params, backend)[0]
    return _LowRankGate.apply(x, *params, backend)


def _low_rank_forward(x, wa, ba, wb, bb, backend):
    """(u, xa, the GEMMs' dtype): the down projection by cuBLAS, the rest in the gate op."""
    dt = run_dtype(x, wb)
    with torch.autocast(x.device.type, enabled=False):
        xa = F.linear(x.to(dt), wa.to(dt), _cast(ba, dt))
        u = get_op("low_rank_gate_mul", backend)(xa, wb.to(dt), _cast(bb, dt), x)
    return u, xa, dt


def run_dtype(x: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a GEMM of w on x's device in (w's own dtype without autocast)."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else w.dtype


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return t.to(dtype) if t is not None else None


class _LowRankGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, wa, ba, wb, bb, backend):
        u, xa, dt = _low_rank_forward(x, wa, ba, wb, bb, backend)
        ctx.save_for_backward(x, xa, wa, ba, wb, bb)
        ctx.dt, ctx.backend = dt, backend
        return u

    @staticmethod
    def backward(ctx, du):
        x, xa, wa, ba, wb, bb = ctx.saved_tensors
        dt = ctx.dt
        with torch.autocast(x.device.type, enabled=False):
            op = get_op("low_rank_gate_mul_backward", ctx.backend)
            # dx comes out whole: the product's share and the low-rank path's, summed in one pass
            da, dx, dxa = op(xa, wb.to(dt), _cast(bb, dt), x, du, wa.to(dt))
            width, rank = x.shape[-1], xa.shape[-1]
            da2, xa2, dxa2 = da.reshape(-1, width), xa.reshape(-1, rank), dxa.reshape(-1, rank)
            dwb, dbb = _up_grads(da2, xa2, wb, bb)
            dwa = (dxa2.t() @ x.reshape(-1, width).to(dt)).to(wa.dtype) if wa.requires_grad else None
            dba = dxa2.sum(0, dtype=torch.float32).to(ba.dtype) if ba is not None and ba.requires_grad else None
        return dx.view(x.shape), dwa, dba, dwb, dbb, None


def _up_grads(da: torch.Tensor, xa: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
    """The up-projection's weight and bias gradients from one GEMM: da^T [xa, 1] (the bias gradient, a
    column sum of da, rides along as a column of ones instead of a separate pass over [rows, width]);
    eight columns of ones, not one, keep the row 16-byte aligned for the GEMM."""
    want_b = b is not None and b.requires_grad
    if not (w.requires_grad or want_b):
        return None, None
    rank = xa.shape[-1]
    cols = F.pad(xa, (0, 8), value=1.0) if want_b else xa
    g = mm_into(torch.empty(da.shape[1], cols.shape[1], device=da.device, dtype=torch.float32), da.t(), cols)
    dw = g[:, :rank].to(w.dtype) if w.requires_grad else None
    return dw, (g[:, rank].to(b.dtype) if want_b else None)
