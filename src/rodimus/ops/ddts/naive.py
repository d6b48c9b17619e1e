"""Sequential DDTS reference: one token at a time, exactly as the paper writes it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rodimus.ops.ddts.common import acc_dtype, check_ddts_inputs


def ddts_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g_pre: torch.Tensor,
    tau_pre: torch.Tensor,
    *,
    scale: float | None = None,
    eps: float = 1e-12,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    output_final_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """DDTS recurrence, looping over time.

    Args:
        q, k, g_pre, tau_pre: [B, T, H, K]; k un-normalised, gates before their activations.
        v: [B, T, H, V].
        scale: output scale, 1/sqrt(K) when None.
        eps: added to sum(k^2) before the rsqrt of the key normalisation.
        initial_state: [N, H, K, V] or None (zeros).
        cu_seqlens: [N + 1] document offsets of a packed batch (B must be 1); the state restarts
            from zeros at every document start (no initial_state then).
        output_final_state: False returns None for the final state (training: nothing reads it, and
            the fused forms then neither store it nor keep it for backward).

    Returns:
        o: [B, T, H, V] in v's dtype; final_state: [N, H, K, V] float32 (float64 for float64 inputs),
        or None.
    """
    n_seq = check_ddts_inputs(q, k, v, g_pre, tau_pre, initial_state, cu_seqlens)
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    if cu_seqlens is None:
        bounds = [(b, 0, T) for b in range(B)]
    else:
        offs = cu_seqlens.tolist()
        bounds = [(0, offs[i], offs[i + 1]) for i in range(n_seq)]
    acc = acc_dtype(v)
    o = torch.zeros(B, T, H, V, dtype=acc, device=q.device)
    finals = []
    for seq, (b, t0, t1) in enumerate(bounds):
        S = (
            initial_state[seq].to(acc).clone()
            if initial_state is not None
            else torch.zeros(H, K, V, dtype=acc, device=q.device)
        )
        for t in range(t0, t1):
            g = F.softplus(g_pre[b, t].to(acc))  # selection gate
            tau = torch.sigmoid(tau_pre[b, t].to(acc))  # temperature gate
            alpha = torch.exp(-g * tau)  # decay
            beta = g**tau  # input scale
            kt = k[b, t].to(acc)
            kt = kt / torch.sqrt((kt * kt).sum(-1, keepdim=True) + eps)
            # S_t = diag(alpha_t) S_{t-1} + (beta_t * k_t)^T u_t
            S = alpha[..., None] * S + (beta * kt)[..., None] * v[b, t].to(acc)[:, None, :]
            # o_t = q_t S_t / sqrt(n)
            o[b, t] = (q[b, t].to(acc)[..., None] * S).sum(-2) * scale
        finals.append(S)
    return o.to(v.dtype), torch.stack(finals) if output_final_state else None
