"""Token-by-token DDTS, the decoding form: O(1) memory in T, state updated in float32."""

from __future__ import annotations

import torch

from rodimus.ops.ddts.common import acc_dtype, check_ddts_inputs, ddts_gates


def ddts_recurrent(
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
    """Recurrent DDTS; same arguments and results as :func:`rodimus.ops.ddts.ddts_naive`.

    Used for decoding (T = 1 per call, the state carried in the cache); gates are computed for all
    T tokens at once, then the state is advanced one token at a time.
    """
    n_seq = check_ddts_inputs(q, k, v, g_pre, tau_pre, initial_state, cu_seqlens)
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    log_a, kb = ddts_gates(k, g_pre, tau_pre, eps)
    alpha = log_a.exp()
    acc = acc_dtype(v)
    qf = q.to(acc) * scale
    vf = v.to(acc)
    if cu_seqlens is not None:  # packed: run each document as its own batch row
        offs = cu_seqlens.tolist()
        outs, finals = [], []
        for i in range(n_seq):
            sl = slice(offs[i], offs[i + 1])
            o_i, s_i = _scan(qf[:, sl], kb[:, sl], vf[:, sl], alpha[:, sl], None, H, K, V)
            outs.append(o_i)
            finals.append(s_i)
        return torch.cat(outs, 1).to(v.dtype), torch.cat(finals, 0) if output_final_state else None
    o, state = _scan(qf, kb, vf, alpha, initial_state, H, K, V)
    return o.to(v.dtype), state if output_final_state else None


def _scan(q, kb, v, alpha, state, H, K, V):
    B, T = q.shape[:2]
    state = (
        state.to(q.dtype) if state is not None else torch.zeros(B, H, K, V, dtype=q.dtype, device=q.device)
    )
    outs = []
    for t in range(T):
        state = alpha[:, t, :, :, None] * state + kb[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], state))
    o = torch.stack(outs, 1) if outs else v.new_zeros(B, 0, H, V)
    return o, state
