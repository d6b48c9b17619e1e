"""Cross-entropy of a linear head, optionally without materialising the [rows, vocab] logits.

The LM head's float32 logits are the largest tensors of a training step (16K rows x 32K vocab = 2 GiB,
plus as much again for log-softmax and its gradient). ``linear_cross_entropy_chunked`` walks the rows in
chunks, forms each chunk's logits, and computes the loss and both gradients right there (the loss is a
sum, so the backward only scales them), so no full-size logits ever exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rodimus.ops.dispatch import get_op, resolve_backend
from rodimus.ops.matmul import mm_into
from rodimus.ops.softmax_xent import acc_dtype as _acc


def _check(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(f"h must be [N, d] and weight [V, d], got {tuple(h.shape)} and {tuple(weight.shape)}")
    if targets.shape != h.shape[:1]:
        raise ValueError(f"targets must be [N={h.shape[0]}], got {tuple(targets.shape)}")


def _compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(h.dtype, weight.dtype)


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100
) -> torch.Tensor:
    """Reference: sum over rows with target != ignore_index of CE(h @ weight^T, target), softmax in float32
    (float64 for float64 inputs).

    Under autocast the product runs in the autocast dtype (as an ``nn.Linear`` head would).
    """
    _check(h, weight, targets)
    dt = _compute_dtype(h, weight)
    logits = F.linear(h.to(dt), weight.to(dt)).to(_acc(dt))
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")


class _ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index, chunk_rows, need_grad, dt):
        # h and weight come uncast: the casts happen here, so their gradients are formed straight in
        # h's and the weight's own dtypes (no rounding to dt and back on the way out)
        N = h.shape[0]
        acc = _acc(dt)
        hd, wd = h.to(dt), weight.to(dt)
        dh = torch.empty_like(h) if need_grad else None
        dw = torch.zeros_like(weight, dtype=torch.promote_types(acc, weight.dtype)) if need_grad else None
        rows = torch.where(targets != ignore_index, targets, -1)
        xent = get_op("xent_grad_", resolve_backend("auto", h.device.type))
        losses = []
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, N, chunk_rows):
                e = min(N, s + chunk_rows)
                hc = hd[s:e]
                g = hc @ wd.t()  # [n, V]: the only vocab-sized tensor, one chunk at a time
                losses.append(xent(g, rows[s:e]))  # g now holds d loss / d logits
                if need_grad:
                    mm_into(dh[s:e], g, wd)
                    mm_into(dw, g.t(), hc, accumulate=True)
        ctx.save_for_backward(dh, dw)
        ctx.w_dtype = weight.dtype
        return torch.cat(losses).sum().to(acc) if losses else torch.zeros((), device=h.device, dtype=acc)

    @staticmethod
    def backward(ctx, grad):
        dh, dw = ctx.saved_tensors
        return dh * grad.to(dh.dtype), (dw * grad).to(ctx.w_dtype), None, None, None, None, None


def linear_cross_entropy_chunked(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """:func:`linear_cross_entropy` (same arguments and result) in row chunks, gradients formed in the forward.

    ``chunk_rows`` defaults to rows worth ~256 MiB of float32 logits. Peak extra memory: one chunk of
    logits (in the compute dtype: bf16 under autocast) plus the gradients of h and weight.
    """
    _check(h, weight, targets)
    V = weight.shape[0]
    if chunk_rows is None:
        chunk_rows = max(1, (256 << 20) // (4 * max(V, 1)))
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    dt = _compute_dtype(h, weight)
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return _ChunkedLinearCE.apply(h, weight, targets, ignore_index, chunk_rows, need_grad, dt)
