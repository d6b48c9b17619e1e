"""Rodimus / Rodimus+ as Hugging Face models: RodimusModel and RodimusForCausalLM."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from rodimus.layers.block import RodimusBlock
from rodimus.layers.mixer import RodimusInnerMixer, ShortConvolution
from rodimus.layers.norm import RMSNorm
from rodimus.models.configuration_rodimus import RodimusConfig
from rodimus.ops.cross_entropy import linear_cross_entropy_chunked
from rodimus.ops.packing import capturing, check_cu_seqlens, shared_derived


class RodimusPreTrainedModel(PreTrainedModel):
    config_class = RodimusConfig
    base_model_prefix = "model"
    _no_split_modules = ["RodimusBlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The official initialisation (see docs/MODEL.md): N(0, 0.02) by default, Xavier(2^-2.5) for the
        mixer's inner projections, tempered-gate biases, and out projections scaled by 1/sqrt(k n_layer)."""
        cfg = self.config
        std = cfg.initializer_range
        if isinstance(module, nn.Linear):
            role = getattr(module, "init_role", None)
            if role in ("xavier", "gate"):
                init.xavier_uniform_(module.weight, gain=2**-2.5)
            else:
                init.normal_(module.weight, mean=0.0, std=std)
                if role == "out" and cfg.rescale_prenorm_residual:
                    k = 3 if cfg.block_type == "rodimus_plus" else 1
                    module.weight.div_(math.sqrt(k * cfg.n_layer))
            if module.bias is not None:
                if role == "gate":
                    init.copy_(module.bias, _gate_bias(module.bias.numel() // 2, module.bias.device))
                else:
                    init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, RodimusInnerMixer):
            init.ones_(module.residual_weight)
        elif isinstance(module, ShortConvolution):
            conv = module.conv1d
            init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(conv.weight.shape[1] * conv.weight.shape[2])
            init.uniform_(conv.bias, -bound, bound)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Load strictly: missing, unexpected or mis-shaped weights raise a ValueError naming them
        (pass ``ignore_mismatched_sizes=True`` to get transformers' lenient behaviour instead)."""
        if kwargs.get("ignore_mismatched_sizes"):
            return super().from_pretrained(*args, **kwargs)
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
        problems = {
            "missing": sorted(info.get("missing_keys", [])),
            "unexpected": sorted(info.get("unexpected_keys", [])),
            "mis-shaped": sorted(str(m) for m in info.get("mismatched_keys", [])),
        }
        detail = "; ".join(f"{k} weights: {v}" for k, v in problems.items() if v)
        if detail:
            where = args[0] if args else kwargs.get("pretrained_model_name_or_path", "")
            raise ValueError(f"checkpoint {where} does not match {cls.__name__}: {detail}")
        return (model, info) if want_info else model


def _gate_bias(n: int, device: torch.device) -> torch.Tensor:
    """[softplus^-1(g0); logit(tau0)], g0 log-uniform in [1e-3, 1e-1], tau0 uniform in [1/16, 0.9]."""
    g0 = torch.exp(torch.empty(n, device=device).uniform_(math.log(1e-3), math.log(1e-1)))
    tau0 = torch.empty(n, device=device).uniform_(1 / 16, 0.9)
    return torch.cat([g0 + torch.log(-torch.expm1(-g0)), torch.logit(tau0)])


class RodimusModel(RodimusPreTrainedModel):
    def __init__(self, config: RodimusConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(RodimusBlock(config, i) for i in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_epsilon, kernel_backend=config.kernel_backend)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """``cu_seqlens`` [N + 1] marks packed documents in a batch of one row: no state or attention
        crosses them. ``attention_mask`` [B, past + T] supports left padding. ``position_ids`` [B, T]
        are RoPE positions (Rodimus+ only; default: cached length + 0..T-1)."""
        cache = cache if cache is not None else past_key_values
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        x = self._embed(input_ids, inputs_embeds)
        B, T = x.shape[:2]
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        if position_ids is not None and (position_ids.dim() != 2 or tuple(position_ids.shape) != (B, T)):
            raise ValueError(f"position_ids must be [B, T] = {(B, T)}, got {tuple(position_ids.shape)}")

        hidden = [] if output_hidden_states else None
        # cu_seqlens is checked once here and the layers' ops derive their document indices from it once
        with shared_derived():
            attention_mask = self._check_inputs(attention_mask, cu_seqlens, cache, B, T)
            for layer in self.layers:
                if hidden is not None:
                    hidden.append(x)
                x = layer(
                    x, attention_mask=attention_mask, cache=cache, cu_seqlens=cu_seqlens, position_ids=position_ids
                )
        x = self.norm_f(x).to(self.embeddings.weight.dtype)
        if hidden is not None:
            hidden.append(x)
        return BaseModelOutputWithPast(
            last_hidden_state=x, cache=cache, hidden_states=tuple(hidden) if hidden is not None else None
        )

    def _embed(self, input_ids, inputs_embeds) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.d_model:
                raise ValueError(f"inputs_embeds must be [B, T, d_model={self.config.d_model}], "
                                 f"got {tuple(inputs_embeds.shape)}")
            return inputs_embeds
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an int64/int32 tensor, got "
                             f"{getattr(input_ids, 'dtype', type(input_ids))}")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, T] with T >= 1, got shape {tuple(input_ids.shape)}")
        if capturing():  # a captured CUDA graph cannot read values; the trainer's batches are checked data
            return self.embeddings(input_ids)
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"input_ids must lie in [0, vocab_size={self.config.vocab_size}), found {bad}")
        return self.embeddings(input_ids)

    def _check_inputs(self, attention_mask, cu_seqlens, cache, B: int, T: int):
        past = _past_length(cache)
        if cu_seqlens is not None:
            if past != 0:
                raise ValueError("cu_seqlens (packed documents) cannot be combined with a filled cache")
            if B != 1:
                raise ValueError(f"cu_seqlens needs a packed batch of one row, got batch size {B}")
            if attention_mask is not None:
                raise ValueError("pass either cu_seqlens (packing) or attention_mask (padding), not both")
            check_cu_seqlens(cu_seqlens, T)  # once per forward: every layer's op then finds it checked
        if attention_mask is None:
            return None
        width_ok = attention_mask.shape[-1] in (T, past + T) if past is not None else attention_mask.shape[-1] >= T
        if attention_mask.dim() != 2 or attention_mask.shape[0] != B or not width_ok:
            want = f"past+T={past + T}" if past is not None else f">= T={T}"
            raise ValueError(f"attention_mask must be [B={B}, {want}] (1 = token, 0 = padding), "
                             f"got {tuple(attention_mask.shape)}")
        if bool(attention_mask.all()):
            return None  # nothing masked: take the fast path
        return attention_mask


def _past_length(cache: Cache | None) -> int | None:
    """Tokens already in the cache, or None where unknown: recurrent-only caches keep no length."""
    if cache is None or len(cache.layers) == 0:
        return 0
    layer = cache.layers[0]
    if hasattr(layer, "cumulative_length"):
        return int(layer.cumulative_length)
    return None if cache.has_previous_state(0) else 0


class RodimusForCausalLM(RodimusPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: RodimusConfig) -> None:
        super().__init__(config)
        self.model = RodimusModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        skip_logits: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits are float32 [B, T, vocab]; ``labels`` give the mean next-token cross-entropy (-100 ignored).

        ``skip_logits=True`` (training with labels) computes the same loss chunk by chunk without forming the
        [B, T, vocab] logits (:func:`rodimus.ops.cross_entropy.linear_cross_entropy_chunked`) and returns
        ``logits=None``. ``num_items_in_batch`` and ``shift_labels`` act as in transformers' causal-LM loss.
        """
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
            cache=cache if cache is not None else past_key_values, use_cache=use_cache,
            output_hidden_states=output_hidden_states, cu_seqlens=cu_seqlens, position_ids=position_ids,
        )
        h = out.last_hidden_state
        if skip_logits:
            if labels is None and kwargs.get("shift_labels") is None:
                raise ValueError("skip_logits=True needs labels (or shift_labels): it only computes the loss")
            loss = self._chunked_loss(h, labels, cu_seqlens, **kwargs)
            return CausalLMOutputWithPast(loss=loss, logits=None, cache=out.cache, hidden_states=out.hidden_states)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(h[:, keep]).float()
        loss = None
        if labels is not None:
            labels = self._mask_boundaries(labels, h, cu_seqlens)
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states)

    @staticmethod
    def _mask_boundaries(labels: torch.Tensor, h: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
        if labels.shape != h.shape[:2]:
            raise ValueError(f"labels must be [B, T] = {tuple(h.shape[:2])}, got {tuple(labels.shape)}")
        if cu_seqlens is not None:  # a document's first token is not a target of the previous one
            T = labels.shape[1]  # empty trailing documents (pad_cu_seqlens) start at T: a spare slot takes them
            starts = torch.zeros(T + 1, dtype=torch.bool, device=labels.device)
            starts[cu_seqlens[1:-1].long()] = True
            labels = labels.masked_fill(starts[None, :T], -100)
        return labels

    def _chunked_loss(
        self,
        h: torch.Tensor,
        labels: torch.Tensor | None,
        cu_seqlens: torch.Tensor | None,
        num_items_in_batch: torch.Tensor | int | None = None,
        ignore_index: int = -100,
        shift_labels: torch.Tensor | None = None,
        **_,
    ) -> torch.Tensor:
        """transformers' ForCausalLMLoss semantics, through the chunked linear cross-entropy."""
        if shift_labels is None:
            labels = self._mask_boundaries(labels, h, cu_seqlens)
            shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
        elif shift_labels.shape != h.shape[:2]:
            raise ValueError(f"shift_labels must be [B, T] = {tuple(h.shape[:2])}, got {tuple(shift_labels.shape)}")
        targets = shift_labels.reshape(-1).to(h.device)
        w = self.lm_head.weight
        total = linear_cross_entropy_chunked(h.reshape(-1, h.shape[-1]), w, targets, ignore_index=ignore_index)
        if num_items_in_batch is None:
            return total / (targets != ignore_index).sum().clamp_min(1)
        return total / num_items_in_batch
