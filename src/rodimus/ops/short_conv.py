"""Causal depthwise short convolution with a carried state (the Rodimus token-mixing prelude).

y_t = act(bias + sum_i w[:, i] * x_{t - (W-1) + i}), with x before the sequence taken from the carried
state (zeros when none) and, in a packed batch, zeros before each document start. Sums run in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rodimus.ops.ddts.common import acc_dtype
from rodimus.ops.packing import seq_index

_ACTIVATIONS = {"silu": F.silu, None: lambda x: x}


def _check(x, weight, bias, initial_state, cu_seqlens, activation) -> tuple[int, int]:
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, D], got shape {tuple(x.shape)}")
    B, _, D = x.shape
    if weight.dim() != 2 or weight.shape[0] != D:
        raise ValueError(f"weight must be [D={D}, W], got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (D,):
        raise ValueError(f"bias must be [D={D}], got {tuple(bias.shape)}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(_ACTIVATIONS)}, got {activation!r}")
    W = weight.shape[1]
    if initial_state is not None:
        if cu_seqlens is not None:
            raise ValueError("initial_state cannot be combined with cu_seqlens")
        if initial_state.shape != (B, D, W - 1):
            raise ValueError(f"initial_state must be [B, D, W-1] = {(B, D, W - 1)}, got {tuple(initial_state.shape)}")
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"with cu_seqlens the batch size must be 1 (packed), got B={B}")
    return W, (B if cu_seqlens is None else cu_seqlens.numel() - 1)


def short_conv_naive(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    activation: str | None = "silu",
    output_final_state: bool = True,
    pass_input: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Reference: loop over time with an explicit sliding buffer.

    Args:
        x: [B, T, D]; weight: [D, W]; bias: [D]; initial_state: [B, D, W-1] (the W-1 previous inputs).
        cu_seqlens: [N + 1] offsets of packed documents (B = 1).
    Returns:
        y: [B, T, D] in x's dtype; final_state: [N, D, W-1], the last W-1 inputs of each sequence
        (None when ``output_final_state`` is False: a caller that only needs y, e.g. a rebuild in backward);
        with ``pass_input``, x itself as a third result, for x's other consumer to read instead of x (the
        Triton backward then adds that consumer's gradient inside its last kernel, not in a separate sum).
    """
    W, _ = _check(x, weight, bias, initial_state, cu_seqlens, activation)
    B, T, D = x.shape
    acc = acc_dtype(x)
    starts = set(cu_seqlens[:-1].tolist()) if cu_seqlens is not None else {0}
    buf = initial_state.to(acc) if initial_state is not None else x.new_zeros(B, D, W - 1, dtype=acc)
    ys, finals = [], []
    for t in range(T):
        if cu_seqlens is not None and t in starts and t > 0:
            finals.append(buf)
        if cu_seqlens is not None and t in starts:
            buf = x.new_zeros(B, D, W - 1, dtype=acc)
        window = torch.cat([buf, x[:, t, :, None].to(acc)], dim=-1)  # [B, D, W]
        y = (window * weight.to(acc)).sum(-1)
        if bias is not None:
            y = y + bias.to(acc)
        ys.append(_ACTIVATIONS[activation](y))
        buf = window[..., 1:]
    finals.append(buf)
    if cu_seqlens is not None:  # empty documents keep a zero state
        lengths = cu_seqlens.diff().tolist()
        it = iter(finals)
        finals = [next(it) if n > 0 else x.new_zeros(B, D, W - 1, dtype=acc) for n in lengths]
    y = torch.stack(ys, 1) if ys else x.new_zeros(B, 0, D, dtype=acc)
    return _results(y.to(x.dtype), torch.cat(finals, 0).to(x.dtype) if output_final_state else None, x, pass_input)


def short_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    activation: str | None = "silu",
    output_final_state: bool = True,
    pass_input: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Vectorised form of :func:`short_conv_naive` (same arguments and results): W shifted FMAs."""
    W, _ = _check(x, weight, bias, initial_state, cu_seqlens, activation)
    B, T, D = x.shape
    acc = acc_dtype(x)
    xa = x.to(acc)
    prev = initial_state.to(acc).transpose(1, 2) if initial_state is not None else xa.new_zeros(B, W - 1, D)
    xcat = torch.cat([prev, xa], dim=1)  # [B, T + W - 1, D]
    w = weight.to(acc)
    if cu_seqlens is not None:
        doc = seq_index(cu_seqlens, T)
        offset = torch.arange(T, device=x.device) - cu_seqlens[doc].to(x.device)  # position within document
    y = bias.to(acc).expand(B, T, D) if bias is not None else xa.new_zeros(B, T, D)
    for i in range(W):
        term = xcat[:, i : i + T] * w[:, i]
        lag = W - 1 - i
        if cu_seqlens is not None and lag > 0:
            term = term * (offset >= lag).to(acc)[None, :, None]
        y = y + term
    y = _ACTIVATIONS[activation](y).to(x.dtype)
    if not output_final_state:
        return _results(y, None, x, pass_input)
    if cu_seqlens is None:
        return _results(y, xcat[:, T:].transpose(1, 2).to(x.dtype), x, pass_input)
    ends = cu_seqlens[1:].long()  # index into xcat of one past each document's last input
    lengths = cu_seqlens.diff().long()
    idx = ends[:, None] + torch.arange(W - 1, device=x.device)[None, :]  # [N, W-1] in xcat coordinates
    valid = torch.arange(W - 1, device=x.device)[None, :] >= (W - 1 - lengths[:, None])
    final = xcat[0][idx] * valid[..., None].to(acc)  # [N, W-1, D]
    return _results(y, final.transpose(1, 2).to(x.dtype), x, pass_input)


def _results(y, final, x, pass_input):
    return (y, final, x) if pass_input else (y, final)
