"""RodimusConfig: the official checkpoints' config.json fields, validated, plus our run-time options."""

from __future__ import annotations

import math
from typing import Any

from transformers import PreTrainedConfig

from rodimus.ops.dispatch import check_backend

BLOCK_TYPES = ("rodimus", "rodimus_plus")

# mixer_cfg / attn_cfg keys and their defaults (official names).
MIXER_DEFAULTS: dict[str, Any] = {
    "mem_size": 64,  # n: width of q, k and the gates; the state is n x d_inner
    "expand_ratio": 2,  # d_inner = expand_ratio * d_model, rounded up to a multiple of 8
    "d_conv": 4,  # short causal convolution width
    "input_gate_low_rank": "auto",  # rank of the input gate; 'auto' = max(d_model // 64, 16)
    "mode": "chunk",  # the official kernel choice; accepted for compatibility, we pick kernels ourselves
    "normalize_epsilon": 1e-12,  # eps inside the key L2 normalisation
}
ATTN_DEFAULTS: dict[str, Any] = {
    "num_heads": 16,  # query heads (and value heads unless num_heads_v says otherwise)
    "num_heads_k": 1,  # shared key heads: SW-SKA has exactly one
    "num_heads_v": None,  # value heads; None = num_heads
    "window_size": 1024,  # official window W: a query sees itself and the previous W // 2 tokens
    "ffn_expand_ratio": 4 / 3,  # SwiGLU hidden = ceil(d_model * ratio / 8) * 8
    "rope_theta": 10000.0,  # RoPE base
}
MIXER_MODES = ("chunk", "fused_chunk", "fused_recurrent")

# Top-level keys the official config.json carries that need no field of their own here.
_OFFICIAL_PASSIVE = (
    "use_fast_path", "use_fused_cross_entropy", "use_fused_swiglu", "no_weight_decay_on_bias",
    "no_weight_decay_on_norm", "no_weight_decay_on_embedding",
)


def _known_base_keys() -> frozenset[str]:
    keys = set(PreTrainedConfig().to_dict())
    keys |= {"transformers_version", "architectures", "model_type", "auto_map", "torch_dtype", "dtype",
             "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id",
             "decoder_start_token_id", "name_or_path", "_name_or_path", "_commit_hash", "_attn_implementation",
             "attn_implementation", "_experts_implementation", "experts_implementation", "return_dict",
             "output_hidden_states", "output_attentions"}
    return frozenset(keys)


class RodimusConfig(PreTrainedConfig):
    """Configuration of Rodimus (``block_type='rodimus'``) and Rodimus+ (``'rodimus_plus'``) models.

    Field names are those of the official release, so its config.json loads unchanged; unknown fields
    raise instead of being silently ignored. Ours: ``kernel_backend``, and ``chunk_size`` (the chunked
    DDTS forms' chunk; None takes each form's fastest: 32 for the torch form, 64 for the Triton kernels).
    """

    model_type = "rodimus"
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layer"}
    keys_to_ignore_at_inference = ["cache"]

    def __init__(
        self,
        block_type: str = "rodimus",
        d_model: int = 2048,
        n_layer: int = 24,
        vocab_size: int = 32000,
        mixer_cfg: dict | None = None,
        attn_cfg: dict | None = None,
        norm_epsilon: float = 1e-5,
        residual_in_fp32: bool = True,
        use_scale_embedding: bool = False,
        use_norm_embedding: bool = False,
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rescale_prenorm_residual: bool = True,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        tie_word_embeddings: bool = False,
        kernel_backend: str = "auto",
        chunk_size: int | None = None,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 0,
        eos_token_id: int | None = 0,
        **kwargs: Any,
    ) -> None:
        passive = {k: kwargs.pop(k) for k in _OFFICIAL_PASSIVE if k in kwargs}
        unknown = sorted(set(kwargs) - _known_base_keys())
        if unknown:
            raise ValueError(f"RodimusConfig: unknown config field(s) {unknown}")
        self.block_type = block_type
        self.d_model = d_model
        self.n_layer = n_layer
        self.vocab_size = vocab_size
        self.mixer_cfg = dict(mixer_cfg or {})
        self.attn_cfg = dict(attn_cfg or {})
        self.norm_epsilon = norm_epsilon
        self.residual_in_fp32 = residual_in_fp32
        self.use_scale_embedding = use_scale_embedding
        self.use_norm_embedding = use_norm_embedding
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rescale_prenorm_residual = rescale_prenorm_residual
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.kernel_backend = kernel_backend
        self.chunk_size = chunk_size
        self.use_cache = use_cache
        for k, v in passive.items():
            setattr(self, k, v)
        super().__init__(
            tie_word_embeddings=tie_word_embeddings, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
            eos_token_id=eos_token_id, **kwargs,
        )
        self.validate()

    # ---- derived settings -------------------------------------------------------------------------
    @property
    def mixer_settings(self) -> dict[str, Any]:
        m = {**MIXER_DEFAULTS, **self.mixer_cfg}
        d_inner = int(math.ceil(m["expand_ratio"] * self.d_model / 8) * 8)
        rank = m["input_gate_low_rank"]
        low_rank = max(self.d_model // 64, 16) if rank == "auto" else int(rank)
        return {**m, "d_inner": d_inner, "low_rank": low_rank}

    @property
    def attn_settings(self) -> dict[str, Any]:
        a = {**ATTN_DEFAULTS, **self.attn_cfg}
        if a["num_heads_v"] is None:
            a["num_heads_v"] = a["num_heads"]
        return a

    @property
    def layer_types(self) -> list[str]:
        """Cache layer kind per layer, as transformers' DynamicCache dispatches them."""
        kind = "hybrid_sliding" if self.block_type == "rodimus_plus" else "linear_attention"
        return [kind] * self.n_layer

    @property
    def sliding_window(self) -> int | None:
        """transformers' sliding cache keeps ``sliding_window - 1`` tokens: the W // 2 a query looks back."""
        if self.block_type != "rodimus_plus":
            return None
        return self.attn_settings["window_size"] // 2 + 1

    # ---- validation -------------------------------------------------------------------------------
    def validate(self) -> None:
        def need(cond: bool, field: str, allowed: str, value: Any) -> None:
            if not cond:
                raise ValueError(f"RodimusConfig.{field} must be {allowed}, got {value!r}")

        need(self.block_type in BLOCK_TYPES, "block_type", f"one of {BLOCK_TYPES}", self.block_type)
        for f in ("d_model", "n_layer", "vocab_size", "chunk_size", "max_position_embeddings"):
            v = getattr(self, f)
            if f == "chunk_size" and v is None:  # each chunked form's own default
                continue
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, f, "a positive int", v)
        need(self.norm_epsilon > 0, "norm_epsilon", "> 0", self.norm_epsilon)
        need(self.use_scale_embedding is False, "use_scale_embedding", "False (no released model uses it)",
             self.use_scale_embedding)
        need(self.use_norm_embedding is False, "use_norm_embedding", "False (no released model uses it)",
             self.use_norm_embedding)
        for f in ("dropout", "attention_dropout", "activation_dropout"):
            need(getattr(self, f) == 0.0, f, "0.0 (dropout is not supported)", getattr(self, f))
        check_backend(self.kernel_backend, "RodimusConfig.kernel_backend")

        unknown = sorted(set(self.mixer_cfg) - set(MIXER_DEFAULTS))
        if unknown:
            raise ValueError(f"RodimusConfig.mixer_cfg: unknown field(s) {unknown}; known: {sorted(MIXER_DEFAULTS)}")
        m = self.mixer_settings
        for f in ("mem_size", "d_conv"):
            need(isinstance(m[f], int) and m[f] > 0, f"mixer_cfg.{f}", "a positive int", m[f])
        need(m["expand_ratio"] > 0, "mixer_cfg.expand_ratio", "> 0", m["expand_ratio"])
        rank = m["input_gate_low_rank"]
        need(rank == "auto" or (isinstance(rank, int) and rank > 0), "mixer_cfg.input_gate_low_rank",
             "'auto' or a positive int", rank)
        need(m["mode"] in MIXER_MODES, "mixer_cfg.mode", f"one of {MIXER_MODES}", m["mode"])
        need(m["normalize_epsilon"] > 0, "mixer_cfg.normalize_epsilon", "> 0", m["normalize_epsilon"])

        if self.block_type == "rodimus":
            return
        unknown = sorted(set(self.attn_cfg) - set(ATTN_DEFAULTS))
        if unknown:
            raise ValueError(f"RodimusConfig.attn_cfg: unknown field(s) {unknown}; known: {sorted(ATTN_DEFAULTS)}")
        a = self.attn_settings
        H = a["num_heads"]
        need(isinstance(H, int) and H > 0, "attn_cfg.num_heads", "a positive int", H)
        need(self.d_model % H == 0, "attn_cfg.num_heads", f"a divisor of d_model={self.d_model}", H)
        need((self.d_model // H) % 2 == 0, "attn_cfg.num_heads", "such that head_dim = d_model / num_heads is even",
             H)
        need(a["num_heads_k"] == 1, "attn_cfg.num_heads_k", "1 (one shared key head)", a["num_heads_k"])
        Hv = a["num_heads_v"]
        need(isinstance(Hv, int) and Hv > 0 and H % Hv == 0, "attn_cfg.num_heads_v", f"a divisor of num_heads={H}",
             Hv)
        W = a["window_size"]
        need(isinstance(W, int) and not isinstance(W, bool) and W >= 1, "attn_cfg.window_size", "an int >= 1", W)
        need(a["ffn_expand_ratio"] > 0, "attn_cfg.ffn_expand_ratio", "> 0", a["ffn_expand_ratio"])
        need(a["rope_theta"] > 0, "attn_cfg.rope_theta", "> 0", a["rope_theta"])
