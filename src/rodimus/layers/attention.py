"""Sliding-window shared-key attention (SW-SKA) of Rodimus+: H query heads, one key head."""

from __future__ import annotations

import torch
from torch import nn

from rodimus.layers.linear import plain_linear, split_linear
from rodimus.layers.rotary import RotaryEmbedding
from rodimus.ops.dispatch import get_op, resolve_backend


class SlidingWindowSharedKeyAttention(nn.Module):
    def __init__(
        self, d_model: int, num_heads: int, num_heads_v: int, window: int, layer_idx: int,
        rope_base: float = 10000.0, kernel_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.num_heads, self.num_heads_v = num_heads, num_heads_v
        self.head_dim = d_model // num_heads
        self.window = window  # previous tokens each query sees besides itself
        self.layer_idx = layer_idx
        self.kernel_backend = kernel_backend
        self.q_proj = nn.Linear(d_model, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, num_heads_v * self.head_dim, bias=False)
        self.out_proj = nn.Linear(num_heads * self.head_dim, d_model, bias=False)
        self.out_proj.init_role = "out"
        self.rotary = RotaryEmbedding(self.head_dim, base=rope_base, kernel_backend=kernel_backend)

    def _qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three projections; under autocast as one GEMM (h read once; the weights are cast anyway)."""
        if not (torch.is_autocast_enabled(h.device.type) and plain_linear(self.q_proj, self.k_proj, self.v_proj)):
            return self.q_proj(h), self.k_proj(h), self.v_proj(h)
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        sizes = [self.q_proj.out_features, self.k_proj.out_features, self.v_proj.out_features]
        return split_linear(h, w, sizes)

    def forward(
        self,
        h: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        cu_seqlens: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``attention_mask`` [B, past + T] (1 = real token) covers cached and new positions.
        ``position_ids`` [B, T] (RoPE positions) default to past .. past + T - 1."""
        B, T, _ = h.shape
        H, Hv, D = self.num_heads, self.num_heads_v, self.head_dim
        if position_ids is None:
            past = cache.get_seq_length(self.layer_idx) if cache is not None else 0
            positions = torch.arange(past, past + T, device=h.device)
        else:
            positions = position_ids
        q, k, v = self._qkv(h)
        q = self.rotary(q.view(B, T, H, D), positions)
        k = self.rotary(k.view(B, T, 1, D), positions)
        v = v.reshape(B, T, Hv, D)
        if cache is not None:
            k_all, v_all = cache.update(k.transpose(1, 2), v.transpose(1, 2), self.layer_idx)
            k, v = k_all[:, 0], v_all.transpose(1, 2)
        else:
            k = k[:, :, 0]
        S = k.shape[1]
        if Hv != H:  # value heads shared by groups of query heads (a view, not a copy)
            v = v[:, :, :, None].expand(B, S, Hv, H // Hv, D).reshape(B, S, H, D)
        key_mask = attention_mask[:, -S:].bool() if attention_mask is not None else None
        op = get_op("swska", resolve_backend(self.kernel_backend, h.device.type))
        o = op(q, k, v, window=self.window, key_mask=key_mask, cu_seqlens=cu_seqlens)
        return self.out_proj(o.reshape(B, T, H * D))
