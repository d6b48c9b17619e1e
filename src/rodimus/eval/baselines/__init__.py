"""Models compared in the MQAR study, built at one model dimension and (where meaningful) one state size.

State sizes (recurrent-state elements per layer) are matched to Rodimus's ``mem_size x d_inner``:
Mamba2 gets ``d_state = mem_size`` with the same expansion, GLA one head with key width ``mem_size``
and value width ``d_inner``. A Transformer's KV cache grows with the sequence; it is reported at the
task's length. Rodimus+ adds its sliding-window KV cache to the Rodimus state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

ARCHS = ("rodimus", "rodimus_plus", "llama", "mamba2", "gla")


def llama_baseline_config(
    d_model: int, n_layer: int, num_heads: int, vocab_size: int, max_positions: int,
    intermediate_size: int | None = None,
):
    """The Llama every comparison uses: untied head, SDPA, one KV head per query head, and a SwiGLU width of
    ceil(8/3 d_model / 8) * 8 unless ``intermediate_size`` says otherwise."""
    from transformers import LlamaConfig

    if intermediate_size is None:
        intermediate_size = -(-8 * d_model // 3 // 8) * 8
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        num_hidden_layers=n_layer,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


@dataclass
class ModelSpec:
    arch: str  # one of ARCHS
    d_model: int  # model dimension
    n_layer: int = 2  # blocks
    vocab_size: int = 8192  # token ids 0 .. vocab_size - 1
    seq_len: int = 256  # longest sequence the model sees (positions, KV size)
    mem_size: int = 16  # Rodimus state rows; sets the matched state of Mamba2 and GLA
    expand: int = 2  # d_inner = expand * d_model for Rodimus and Mamba2; GLA's value width
    head_dim: int = 16  # per-head width for attention (Llama, Rodimus+) and Mamba2 heads
    window: int = 32  # Rodimus+ sliding window (official W: a query sees W // 2 earlier tokens)

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        for name in (
            "d_model",
            "n_layer",
            "vocab_size",
            "seq_len",
            "mem_size",
            "expand",
            "head_dim",
            "window",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.head_dim:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of head_dim ({self.head_dim})")

    @property
    def d_inner(self) -> int:
        return int(math.ceil(self.expand * self.d_model / 8) * 8)


def build_model(spec: ModelSpec) -> tuple[nn.Module, int]:
    """Return (model, state elements per layer). Every model maps input_ids to an output with .logits."""
    spec.validate()
    d, heads = spec.d_model, max(1, spec.d_model // spec.head_dim)
    if spec.arch in ("rodimus", "rodimus_plus"):
        from rodimus import RodimusConfig, RodimusForCausalLM

        attn = dict(num_heads=heads, window_size=spec.window) if spec.arch == "rodimus_plus" else None
        cfg = RodimusConfig(
            block_type=spec.arch,
            d_model=d,
            n_layer=spec.n_layer,
            vocab_size=spec.vocab_size,
            mixer_cfg=dict(mem_size=spec.mem_size, expand_ratio=spec.expand),
            attn_cfg=attn,
            max_position_embeddings=spec.seq_len,
        )
        model = RodimusForCausalLM(cfg)
        state = spec.mem_size * cfg.mixer_settings["d_inner"]
        if spec.arch == "rodimus_plus":
            hd = d // heads
            state += (spec.window // 2) * hd * (1 + heads)  # one shared key head, `heads` value heads
        return model, state
    if spec.arch == "llama":
        from transformers import LlamaForCausalLM

        cfg = llama_baseline_config(d, spec.n_layer, heads, spec.vocab_size, spec.seq_len)
        return LlamaForCausalLM(cfg), 2 * spec.seq_len * d
    if spec.arch == "mamba2":
        from transformers import Mamba2Config, Mamba2ForCausalLM

        d_inner = spec.expand * d
        if d_inner % spec.head_dim:
            raise ValueError(f"mamba2: expand * d_model ({d_inner}) must be a multiple of head_dim")
        cfg = Mamba2Config(
            vocab_size=spec.vocab_size,
            hidden_size=d,
            num_hidden_layers=spec.n_layer,
            state_size=spec.mem_size,
            expand=spec.expand,
            head_dim=spec.head_dim,
            num_heads=d_inner // spec.head_dim,
            n_groups=1,
            chunk_size=min(64, spec.seq_len),
            tie_word_embeddings=False,
        )
        return Mamba2ForCausalLM(cfg), d_inner * spec.mem_size
    from rodimus.eval.baselines.gla import GLAForCausalLM

    model = GLAForCausalLM(spec.vocab_size, d, spec.n_layer, key_dim=spec.mem_size, value_dim=spec.d_inner)
    return model, spec.mem_size * spec.d_inner
