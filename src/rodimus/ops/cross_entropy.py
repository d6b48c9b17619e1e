"""Cross-entropy of a linear head, optionally without materialising the [rows, vocab] logits.

The LM head's float32 logits are the largest tensors of a training step (16K rows x 32K vocab = 2 GiB,
plus as much again for log-softmax and its gradient). ``linear_cross_entropy_chunked`` walks the rows in
chunks, forms each chunk's logits, and computes the loss and both gradients right there (the loss is a
sum, so the backward only scales them), so no full-size logits ever exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def _acc(dt: torch.dtype) -> torch.dtype:
    """float32 softmax, float64 for float64 inputs (so gradcheck-style tests are meaningful)."""
    return torch.float64 if dt == torch.float64 else torch.float32


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
    def forward(ctx, h, weight, targets, ignore_index, chunk_rows, need_grad):
        N = h.shape[0]
        acc = _acc(h.dtype)
        loss = torch.zeros((), device=h.device, dtype=acc)
        dh = torch.empty_like(h) if need_grad else None
        dw = torch.zeros(weight.shape, device=weight.device, dtype=acc) if need_grad else None
        valid = targets != ignore_index
        safe = torch.where(valid, targets, 0)
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, N, chunk_rows):
                e = min(N, s + chunk_rows)
                hc = h[s:e]
                logits = (hc @ weight.t()).to(acc)  # [n, V]: the only vocab-sized tensor, one chunk at a time
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, safe[s:e, None])[:, 0]
                vc = valid[s:e]
                loss += torch.where(vc, lse - picked, 0.0).sum()
                if need_grad:
                    p = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                    p.scatter_add_(1, safe[s:e, None], torch.full_like(lse[:, None], -1.0))
                    p.mul_(vc[:, None])
                    g = p.to(h.dtype)
                    dh[s:e] = g @ weight
                    dw += (g.t() @ hc).to(acc)
        ctx.save_for_backward(dh, dw)
        return loss

    @staticmethod
    def backward(ctx, grad):
        dh, dw = ctx.saved_tensors
        return dh * grad.to(dh.dtype), dw * grad, None, None, None, None


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
    logits plus the gradients of h and weight.
    """
    _check(h, weight, targets)
    V = weight.shape[0]
    if chunk_rows is None:
        chunk_rows = max(1, (256 << 20) // (4 * max(V, 1)))
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    dt = _compute_dtype(h, weight)
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return _ChunkedLinearCE.apply(h.to(dt), weight.to(dt), targets, ignore_index, chunk_rows, need_grad)
