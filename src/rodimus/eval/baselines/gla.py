"""A small GLA language model for the MQAR comparison (pre-norm blocks: GLA mixer, then SwiGLU MLP)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from rodimus.eval.baselines.gla_op import gla_chunk


class GLAMixer(nn.Module):
    """Token mixer of GLA: low-rank data-dependent key-channel decay, per-head norm, swish output gate."""

    def __init__(
        self,
        d_model: int,
        key_dim: int,
        value_dim: int,
        num_heads: int,
        gate_rank: int = 16,
        gate_normalizer: float = 16.0,
        chunk_size: int = 32,
    ) -> None:
        super().__init__()
        if key_dim % num_heads or value_dim % num_heads:
            raise ValueError(
                f"key_dim {key_dim} and value_dim {value_dim} must divide by num_heads {num_heads}"
            )
        self.h, self.normalizer, self.chunk_size = num_heads, gate_normalizer, chunk_size
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(d_model, gate_rank, bias=False), nn.Linear(gate_rank, key_dim))
        self.norm = nn.RMSNorm(value_dim // num_heads)
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, self.h, -1)

        # the 1/normalizer keeps decays near 1 at init, so memories last (GLA paper's choice of 16)
        log_a = F.logsigmoid(self.gk_proj(x)) / self.normalizer
        o, _ = gla_chunk(
            heads(self.q_proj(x)),
            heads(self.k_proj(x)),
            heads(self.v_proj(x)),
            heads(log_a),
            chunk_size=self.chunk_size,
        )
        o = self.norm(o).reshape(B, T, -1) * F.silu(self.g_proj(x))
        return self.o_proj(o)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(a) * b)


class GLAForCausalLM(nn.Module):
    """Returns an object with ``.logits`` like the transformers models, so MQAR treats all alike."""

    def __init__(
        self, vocab_size: int, d_model: int, n_layer: int, key_dim: int, value_dim: int, num_heads: int = 1
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList()
        for _ in range(n_layer):
            self.layers.append(
                nn.ModuleDict(
                    {
                        "norm1": nn.RMSNorm(d_model),
                        "mixer": GLAMixer(d_model, key_dim, value_dim, num_heads),
                        "norm2": nn.RMSNorm(d_model),
                        "mlp": SwiGLU(d_model, -(-8 * d_model // 3 // 8) * 8),
                    }
                )
            )
        self.norm = nn.RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = x + layer["mixer"](layer["norm1"](x))
            x = x + layer["mlp"](layer["norm2"](x))
        return SimpleNamespace(logits=self.lm_head(self.norm(x)).float())
