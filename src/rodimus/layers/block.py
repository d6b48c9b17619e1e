"""The two block types: ``rodimus`` (mixer only) and ``rodimus_plus`` (mixer, SW-SKA, FFN)."""

from __future__ import annotations

import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from rodimus.layers.attention import SlidingWindowSharedKeyAttention
from rodimus.layers.ffn import GatedMLP, ffn_hidden_size
from rodimus.layers.mixer import RodimusMixer
from rodimus.layers.norm import RMSNorm
from rodimus.layers.recompute import run_dtype


class RodimusBlock(GradientCheckpointingLayer):
    """Pre-norm residual block. ``rodimus_plus`` adds the paper's two-hop residual:
    r = h + Mixer(n1(h)); a = Attn(n2(r)); h' = r + FFN(n3(r + a)): attention reaches the residual
    stream only through the FFN."""

    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.is_plus = config.block_type == "rodimus_plus"
        self.residual_in_fp32 = config.residual_in_fp32
        m = config.mixer_settings
        eps = config.norm_epsilon
        self.mixer_norm = RMSNorm(config.d_model, eps=eps, kernel_backend=config.kernel_backend)
        self.mixer = RodimusMixer(
            config.d_model, m["d_inner"], m["mem_size"], m["low_rank"], m["d_conv"], m["normalize_epsilon"],
            eps, layer_idx, config.kernel_backend, config.chunk_size,
        )
        if self.is_plus:
            a = config.attn_settings
            self.attn_norm = RMSNorm(config.d_model, eps=eps, kernel_backend=config.kernel_backend)
            self.attn = SlidingWindowSharedKeyAttention(
                config.d_model, a["num_heads"], a["num_heads_v"], a["window_size"] // 2, layer_idx,
                a["rope_theta"], config.kernel_backend,
            )
            self.ffn_norm = RMSNorm(config.d_model, eps=eps, kernel_backend=config.kernel_backend)
            self.ffn = GatedMLP(
                config.d_model, ffn_hidden_size(config.d_model, a["ffn_expand_ratio"]), config.kernel_backend
            )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        cu_seqlens: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = hidden_states.float() if self.residual_in_fp32 else hidden_states
        dtype = run_dtype(h, self.mixer_norm.weight)  # the norms write what the projections after them read
        T = h.shape[1]
        token_mask = attention_mask[:, -T:] if attention_mask is not None else None
        y, h = self.mixer_norm.forward_and_pass(h, dtype)
        r = h + self.mixer(y, token_mask, cache, cu_seqlens)
        if not self.is_plus:
            return r
        y, r = self.attn_norm.forward_and_pass(r, dtype)
        a = self.attn(y, attention_mask, cache, cu_seqlens, position_ids)
        return r + self.ffn(self.ffn_norm(r + a, dtype))
