"""Gated linear attention (Yang et al. 2023) as a readable recurrence and an exact chunked form.

GLA is the DDTS recurrence without the temperature and key normalisation: per key channel a decay
alpha_t = exp(log_a_t) in (0, 1], S_t = alpha_t[:, None] * S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_a: torch.Tensor) -> None:
    if q.dim() != 4 or k.shape != q.shape or log_a.shape != q.shape:
        raise ValueError(
            f"q, k, log_a must share one [B, T, H, K] shape, got {q.shape}, {k.shape}, {log_a.shape}"
        )
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] matching q's [B, T, H], got {tuple(v.shape)}")


def gla_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_a: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token reference: o [B, T, H, V] (v's dtype) and the final state [B, H, K, V] (float32)."""
    _check(q, k, v, log_a)
    B, T, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    acc = torch.promote_types(v.dtype, torch.float32)
    S = q.new_zeros(B, H, K, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
    outs = []
    for t in range(T):
        S = (
            log_a[:, t].to(acc).exp()[..., None] * S
            + k[:, t].to(acc)[..., None] * v[:, t].to(acc)[..., None, :]
        )
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t].to(acc) * scale, S))
    return torch.stack(outs, 1).to(v.dtype), S


def gla_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_a: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise-parallel GLA, same results as :func:`gla_recurrent`; differentiable by autograd.

    Pairwise decays exp(b_t - b_s) are formed for s <= t only (b the running sum of log_a), so no
    exponent is positive and nothing overflows however strong the gate.
    """
    _check(q, k, v, log_a)
    B, T, H, K = q.shape
    Vd = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    acc = torch.promote_types(v.dtype, torch.float32)
    C = chunk_size
    N = max(1, -(-T // C))
    pad = N * C - T

    def chunks(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [B, H, N, C, D]
        x = F.pad(x.to(acc), (0, 0, 0, 0, 0, pad))
        return x.view(B, N, C, H, x.shape[-1]).permute(0, 3, 1, 2, 4)

    qc, kc, vc, ac = chunks(q * scale), chunks(k), chunks(v), chunks(log_a)
    b = ac.cumsum(-2)  # [B, H, N, C, K], running log decay inside each chunk
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    diff = torch.where(causal[:, :, None], b[..., :, None, :] - b[..., None, :, :], float("-inf"))
    o = ((qc[..., :, None, :] * kc[..., None, :, :] * diff.exp()).sum(-1)) @ vc  # within each chunk

    b_last = b[..., -1:, :]
    d_state = (kc * (b_last - b).exp()).transpose(-1, -2) @ vc  # [B, H, N, K, V] chunk's own contribution
    S = q.new_zeros(B, H, K, Vd, dtype=acc) if initial_state is None else initial_state.to(acc)
    inter = []
    for n in range(N):  # short scan across chunks
        inter.append((qc[:, :, n] * b[:, :, n].exp()) @ S)
        S = b_last[:, :, n, 0, :, None].exp() * S + d_state[:, :, n]
    o = o + torch.stack(inter, 2)
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, Vd)[:, :T]
    return o.to(v.dtype), S
