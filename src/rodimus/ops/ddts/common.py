"""Input checks and the gate math shared by the DDTS forms."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rodimus.ops.packing import check_cu_seqlens


def check_ddts_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g_pre: torch.Tensor,
    tau_pre: torch.Tensor,
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
) -> int:
    """Validate shapes; return the number of sequences N (B, or len(cu_seqlens) - 1)."""
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, K], got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("g_pre", g_pre), ("tau_pre", tau_pre)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have the shape of q {tuple(q.shape)}, got {tuple(t.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] matching q's [B, T, H], got {tuple(v.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v), ("g_pre", g_pre), ("tau_pre", tau_pre)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    B, _, H, K = q.shape
    V = v.shape[-1]
    n = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1 (packed), got B={B}")
        n = check_cu_seqlens(cu_seqlens, q.shape[1])
        if initial_state is not None:
            raise ValueError("initial_state cannot be combined with cu_seqlens: packed documents start from zeros")
    if initial_state is not None and initial_state.shape != (n, H, K, V):
        raise ValueError(f"initial_state must be [N, H, K, V] = {(n, H, K, V)}, got {tuple(initial_state.shape)}")
    return n


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float32, or float64 for float64 inputs (so gradcheck is meaningful)."""
    return torch.promote_types(x.dtype, torch.float32)


def ddts_gates(
    k: torch.Tensor, g_pre: torch.Tensor, tau_pre: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (log alpha, beta * k / ||k||) in float32 (float64 for float64 inputs).

    g = softplus(g_pre) selects, tau = sigmoid(tau_pre) tempers: alpha = exp(-g tau), beta = g ** tau.
    """
    acc = acc_dtype(k)
    g = F.softplus(g_pre.to(acc))
    tau = torch.sigmoid(tau_pre.to(acc))
    log_alpha = -g * tau
    beta = g.pow(tau)
    kf = k.to(acc)
    k_hat = kf * torch.rsqrt(kf.pow(2).sum(-1, keepdim=True) + eps)
    return log_alpha, k_hat * beta
