"""Chunkwise-parallel DDTS: exact, O(T x chunk) memory, differentiable by autograd.

Within a chunk of C tokens the pairwise decays exp(b_t - b_s) (b the running sum of log alpha)
are formed explicitly for s <= t only, so every exponent is <= 0 and nothing can overflow however
strong the decay; across chunks a [K, V] state is carried. Documents of a packed batch are kept
apart by masking pairs, carries and state sums that cross a document start.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rodimus.ops.ddts.common import acc_dtype, check_ddts_inputs, ddts_gates
from rodimus.ops.packing import seq_index


def ddts_chunk(
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
    chunk_size: int | None = None,
    output_final_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked DDTS; same arguments and results as :func:`rodimus.ops.ddts.ddts_naive`.

    ``chunk_size`` None: 32, this form's fastest on CPU (fwd+bwd 2.7x faster than 64 at T 1024, V 1024).

    Shapes: q, k, g_pre, tau_pre [B, T, H, K]; v [B, T, H, V]; initial_state [N, H, K, V];
    returns o [B, T, H, V] (v's dtype) and final_state [N, H, K, V] (float32).
    """
    n_seq = check_ddts_inputs(q, k, v, g_pre, tau_pre, initial_state, cu_seqlens)
    chunk_size = 32 if chunk_size is None else chunk_size
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    C = chunk_size
    N = max(1, -(-T // C))
    pad = N * C - T

    log_a, kb = ddts_gates(k, g_pre, tau_pre, eps)
    acc = acc_dtype(v)
    qf = q.to(acc) * scale
    vf = v.to(acc)

    def chunks(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [B, H, N, C, D]
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(B, N, C, H, x.shape[-1]).permute(0, 3, 1, 2, 4).contiguous()

    qc, kc, vc, ac = chunks(qf), chunks(kb), chunks(vf), chunks(log_a)
    b = ac.cumsum(-2)  # [B, H, N, C, K], non-increasing along C
    b_last = b[..., -1:, :]

    pair_mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if cu_seqlens is not None:
        doc = seq_index(cu_seqlens, T)
        doc = F.pad(doc, (0, pad), value=n_seq - 1).view(N, C)  # padding joins the last document
        prev_doc = torch.cat([doc[:1, :1], doc[:-1, -1:]])  # document of the state carried into chunk n
        pair_mask = pair_mask & (doc[:, :, None] == doc[:, None, :])  # [N, C, C]
        same_as_last = (doc == doc[:, -1:]).to(acc)[:, :, None]  # [N, C, 1]: tokens feeding the end state
        from_carry = (doc == prev_doc).to(acc)[:, :, None]  # [N, C, 1]: tokens that see the carry
        keeps_carry = (doc[:, -1] == prev_doc[:, 0]).to(acc)[:, None]  # [N, 1]

    # intra-chunk: o_t += sum_{s<=t} (q_t . (k_s * exp(b_t - b_s))) v_s
    scores = _intra_scores(qc, kc, b, pair_mask)
    o = scores @ vc

    # chunk-local state increments and carries, then a short scan over chunks
    w = torch.exp(b_last - b)
    carry = torch.exp(b_last.squeeze(-2))  # [B, H, N, K]
    if cu_seqlens is not None:
        w = w * same_as_last
        carry = carry * keeps_carry
    d_state = (kc * w).transpose(-1, -2) @ vc  # [B, H, N, K, V]
    state = (
        initial_state.to(acc)
        if initial_state is not None
        else torch.zeros(B, H, K, V, dtype=acc, device=q.device)
    )
    states = []
    # unbind once: indexing inside the loop would make backward write N full-size gradients
    for carry_n, d_state_n in zip(carry.unsqueeze(-1).unbind(2), d_state.unbind(2)):
        states.append(state)
        state = carry_n * state + d_state_n
    q_decayed = qc * torch.exp(b)
    if cu_seqlens is not None:
        q_decayed = q_decayed * from_carry
    o = o + q_decayed @ torch.stack(states, dim=2)

    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    if not output_final_state:
        return o.to(v.dtype), None
    if cu_seqlens is None:
        return o.to(v.dtype), state
    return o.to(v.dtype), _document_end_states(cu_seqlens, b, kc, vc, states, doc, prev_doc, C)


# A chunk whose decay stays above exp(-FACTOR_LIMIT) in every channel takes the matmul form
# (q e^b)(k e^-b)^T: both factors lie in [e^-30, e^30], far inside float32's range.
FACTOR_LIMIT = 30.0


def _intra_scores(qc: torch.Tensor, kc: torch.Tensor, b: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
    """[.., C, C] scores sum_k q_tk k_sk exp(b_tk - b_sk) for visible pairs (s <= t, same document), else 0.

    Mild-decay chunks use a matmul; the rest form the pairwise decays explicitly (every exponent <= 0), so
    the result is exact for any decay strength.
    """
    strong = b[..., -1, :].amin(-1) < -FACTOR_LIMIT  # [B, H, N]: some channel decays too far to factor
    ref = -b.clamp(min=-FACTOR_LIMIT)  # clamped so that strong chunks stay finite (they are replaced below)
    scores = (qc * torch.exp(-ref)) @ (kc * torch.exp(ref)).transpose(-1, -2)
    scores = scores.masked_fill(~pair_mask, 0.0)
    if bool(strong.any()):
        bq, bk, bb = qc[strong], kc[strong], b[strong]  # [M, C, K]
        mask = pair_mask if pair_mask.dim() == 2 else pair_mask.expand(*strong.shape, -1, -1)[strong]
        diff = bb.unsqueeze(-2) - bb.unsqueeze(-3)  # [M, C(t), C(s), K]
        decay = torch.where(mask[..., None], diff, float("-inf")).exp()
        exact = (bq.unsqueeze(-2) * bk.unsqueeze(-3) * decay).sum(-1)
        scores = scores.index_put(strong.nonzero(as_tuple=True), exact)
    return scores


def _document_end_states(
    cu_seqlens: torch.Tensor,
    b: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    states: list[torch.Tensor],
    doc: torch.Tensor,
    prev_doc: torch.Tensor,
    C: int,
) -> torch.Tensor:
    """State at the last token of every packed document: [N, H, K, V]."""
    ends = cu_seqlens[1:].long() - 1
    empty = cu_seqlens[1:] == cu_seqlens[:-1]
    ends = ends.clamp(min=0)
    n_idx, p_idx = ends // C, ends % C
    ids = torch.arange(len(ends), device=ends.device)
    b0 = b[0].permute(1, 2, 0, 3)  # [N, C, H, K]
    k0 = kc[0].permute(1, 2, 0, 3)
    v0 = vc[0].permute(1, 2, 0, 3)
    b_end = b0[n_idx, p_idx]  # [D, H, K]
    pos = torch.arange(C, device=ends.device)
    mine = (pos[None, :] <= p_idx[:, None]) & (doc[n_idx] == ids[:, None])  # [D, C]
    w = torch.where(mine[:, :, None, None], b_end[:, None] - b0[n_idx], float("-inf")).exp()
    local = torch.einsum("dchk,dchv->dhkv", k0[n_idx] * w, v0[n_idx])
    out_dtype = vc.dtype
    carried = torch.stack(states, 0)[n_idx, 0]  # [D, H, K, V]
    keep = (prev_doc[n_idx, 0] == ids).to(out_dtype)[:, None, None, None]
    out = keep * torch.exp(b_end)[..., None] * carried + local
    return torch.where(empty[:, None, None, None], torch.zeros_like(out), out)
