"""Softmax cross-entropy of a block of logits, with its gradient written over the logits.

The loss head's inner step (:mod:`rodimus.ops.cross_entropy` walks the rows in chunks and calls this on
each chunk's logits). The fused Triton form is :mod:`rodimus.ops.triton.cross_entropy`.
"""

from __future__ import annotations

import torch


def acc_dtype(dt: torch.dtype) -> torch.dtype:
    """float32 softmax, float64 for float64 inputs (so gradcheck-style tests are meaningful)."""
    return torch.float64 if dt == torch.float64 else torch.float32


def softmax_xent_grad_(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy of ``logits`` [n, V] against ``targets`` [n] (-1: row ignored), and its
    gradient written over ``logits`` in place: softmax - onehot(target), zero on ignored rows.

    Softmax in float32 (float64 for float64 logits); returns the [n] float32 (float64) losses, 0 where
    ignored. The fused kernel reads the logits twice and writes them once in their own dtype; this form
    makes about six float32 passes.
    """
    valid = targets >= 0
    safe = targets.clamp_min(0)[:, None]
    lf = logits.to(acc_dtype(logits.dtype))
    lse = torch.logsumexp(lf, dim=-1)
    loss = torch.where(valid, lse - lf.gather(1, safe)[:, 0], 0.0)
    p = lf.sub_(lse[:, None]).exp_()
    p.scatter_add_(1, safe, torch.full_like(lse[:, None], -1.0))
    logits.copy_(p.mul_(valid[:, None]))
    return loss
