"""Per-request model state and its batched form, for the continuous-batching engine.

A request's state is whatever the model's cache holds for one row. The engine prefills each request
alone (batch of one, exactly as offline generation does), then decodes all active requests in one
batched step; requests join and leave between steps, so rows are gathered and scattered here using
the tensors of transformers' cache layers.

Two backends:
- :class:`RecurrentBackend` (Rodimus, Rodimus+): per layer the short-conv state and the recurrent
  state, fixed in size, plus for Rodimus+ the last W//2 keys/values (bounded by the window).
- :class:`KVBackend` (Llama-style baselines with a growing KV cache): rows are left-padded to a
  common length with an attention mask and per-row position ids.

By default Rodimus models decode through :class:`rodimus.serve.static_state.StaticBackend` (a
:class:`RecurrentBackend` whose decode runs on StaticDecoder buffers); :func:`make_backend` picks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

REBASE_AFTER = 4096  # Rodimus+ batch clock steps before all rows' window keys are re-rotated back


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass
class RowState:
    """One request's state: per layer a tuple of tensors with a leading batch dim of 1."""

    layers: list[tuple[torch.Tensor | None, ...]]
    length: int  # tokens read so far (the next token's position)

    @property
    def nbytes(self) -> int:
        return _nbytes(t for layer in self.layers for t in layer)

    def clone(self) -> RowState:
        return RowState(
            [tuple(None if t is None else t.clone() for t in lay) for lay in self.layers], self.length
        )


@dataclass
class Batch:
    cache: DynamicCache  # batched cache the model reads and updates in place
    lengths: list[int]  # true position of each row
    extra: dict = field(default_factory=dict)  # backend bookkeeping (key counts, offsets)

    @property
    def size(self) -> int:
        return len(self.lengths)


def _cat_rows(old: torch.Tensor | None, keep: torch.Tensor | None, new: list[torch.Tensor]) -> torch.Tensor:
    parts = [] if old is None or keep is None or keep.numel() == 0 else [old.index_select(0, keep)]
    return torch.cat(parts + new, dim=0) if len(parts) + len(new) > 1 else (parts + new)[0].contiguous()


def _padded_kv(old, keep_t: torch.Tensor | None, new: list[tuple], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of the kept rows of cache layer ``old`` then of ``new`` (key, value) pairs, left-padded
    to ``width`` positions and stacked by row."""
    pairs = [(old.keys.index_select(0, keep_t), old.values.index_select(0, keep_t))] if keep_t is not None else []
    pairs += new
    return tuple(torch.cat([_left_pad(t, width) for t in ts], 0) for ts in zip(*pairs, strict=True))


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dim -2 (sequence) on the left with zeros up to ``width``."""
    missing = width - t.shape[-2]
    return F.pad(t, (0, 0, missing, 0)) if missing > 0 else t[..., t.shape[-2] - width :, :]


class _Backend:
    """Shared prefill / decode plumbing; subclasses gather and scatter their cache's rows."""

    def __init__(self, model) -> None:
        self.model = model
        self.config = model.config
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.device = next(model.parameters()).device

    def _new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    @torch.inference_mode()
    def prefill(self, ids: list[int], state: RowState | None) -> tuple[torch.Tensor, RowState]:
        """Read ``ids`` after ``state`` (None = empty); returns next-token logits [V] and the new state."""
        cache = self._cache_for_prefill(state) if state is not None else self._new_cache()
        past = state.length if state is not None else 0
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model(
            input_ids=x, cache=cache, use_cache=True, logits_to_keep=1, **self._prefill_kwargs(past, len(ids))
        )
        return out.logits[0, -1].float(), self._row_from_cache(out.cache, past + len(ids))

    def _prefill_kwargs(self, past: int, n: int) -> dict:
        return {}

    def _merge_plan(
        self, batch: Batch | None, keep: list[int], new: list[RowState]
    ) -> tuple[torch.Tensor | None, list[int]] | None:
        """None when the merge is empty, else (index of the kept rows or None, lengths of the merged rows)."""
        kept = batch is not None and len(keep) > 0
        if not kept and not new:
            return None
        keep_t = torch.tensor(keep, dtype=torch.long, device=self.device) if kept else None
        return keep_t, ([batch.lengths[i] for i in keep] if kept else []) + [s.length for s in new]

    def batch_nbytes(self, batch: Batch) -> int:
        """Bytes of state the batch holds for its requests."""
        from rodimus.models.cache import cache_nbytes

        return cache_nbytes(batch.cache)


class RecurrentBackend(_Backend):
    """Rodimus / Rodimus+ states from transformers' linear-attention cache layers.

    Rodimus+ attention applies RoPE at one position per forward (the cache's length), so a batch runs
    on a shared virtual clock ``P``: a row that joins with its true position ``p`` has its window keys
    rotated by ``P - p``. Attention scores depend only on position differences, so this is exact in
    arithmetic (not bit-for-bit: one extra rotation in float32). Rows with too few keys are masked.
    """

    def __init__(self, model) -> None:
        super().__init__(model)
        self.is_plus = getattr(self.config, "block_type", "rodimus") == "rodimus_plus"
        if self.is_plus:
            self.window_keep = self.config.sliding_window - 1  # keys a layer keeps between steps
            self.rotary = [blk.attn.rotary for blk in model.model.layers]

    # ---- cache <-> rows ------------------------------------------------------------------------
    def _install(self, cache: DynamicCache, layers: list[tuple], clock: int) -> DynamicCache:
        for layer, tensors in zip(cache.layers, layers, strict=True):
            conv, rec = tensors[0], tensors[1]
            layer.conv_states[0], layer.recurrent_states[0] = conv, rec
            layer.is_conv_states_initialized[0] = layer.is_recurrent_states_initialized[0] = True
            layer.has_previous_state[0] = True
            layer.conv_kernel_size[0] = conv.shape[-1]
            layer.device, layer.dtype = conv.device, conv.dtype
            if self.is_plus:
                layer.keys, layer.values = tensors[2], tensors[3]
                layer.is_initialized = True
                layer._sliding_window_tensor = layer._sliding_window_tensor.to(conv.device)
                layer.cumulative_length = clock
        return cache

    def _cache_for_prefill(self, state: RowState) -> DynamicCache:
        return self._install(self._new_cache(), state.clone().layers, state.length)

    def _row_from_cache(self, cache: DynamicCache, length: int) -> RowState:
        layers = []
        for layer in cache.layers:
            t = [layer.conv_states[0], layer.recurrent_states[0]]
            if self.is_plus:  # the prefill's keys are a view of the whole prompt's: copy the window only
                t += [
                    layer.keys[..., -self.window_keep :, :].clone(),
                    layer.values[..., -self.window_keep :, :].clone(),
                ]
            layers.append(tuple(t))
        return RowState(layers, length)

    def _rotate(self, layer_idx: int, keys: torch.Tensor, shift: int) -> torch.Tensor:
        """keys [B, 1, n, D] rotated by ``shift`` positions (RoPE rotations compose additively)."""
        if shift == 0 or keys.shape[-2] == 0:
            return keys
        pos = torch.full((keys.shape[-2],), shift, dtype=torch.long, device=keys.device)
        return self.rotary[layer_idx](keys.transpose(1, 2), pos).transpose(1, 2)

    # ---- batch management ----------------------------------------------------------------------
    def merge(self, batch: Batch | None, keep: list[int], new: list[RowState]) -> Batch | None:
        """Rows ``keep`` of ``batch`` (in order) followed by the ``new`` states, as one batch."""
        plan = self._merge_plan(batch, keep, new)
        if plan is None:
            return None
        keep_t, lengths = plan
        kept = keep_t is not None
        n_layers = len(self.model.model.layers)
        olds = [batch.cache.layers[li] if kept else None for li in range(n_layers)]
        convs = [
            _cat_rows(o.conv_states[0] if o else None, keep_t, [s.layers[li][0] for s in new])
            for li, o in enumerate(olds)
        ]
        recs = [
            _cat_rows(o.recurrent_states[0] if o else None, keep_t, [s.layers[li][1] for s in new])
            for li, o in enumerate(olds)
        ]
        if not self.is_plus:
            return Batch(self._install(self._new_cache(), list(zip(convs, recs, strict=True)), 0), lengths)
        # Rodimus+: keys share one width S; row i's valid keys are its rightmost counts[i]
        counts = ([batch.extra["counts"][i] for i in keep] if kept else []) + [
            min(s.length, self.window_keep) for s in new
        ]
        # the clock never falls below the window, so a mask of width clock + 1 always covers the keys
        clock = batch.extra["clock"] if kept else max(self.window_keep, *(s.length for s in new))
        width = max(counts)
        offsets = ([batch.extra["offsets"][i] for i in keep] if kept else []) + [
            clock - s.length for s in new
        ]
        layers = []
        for li, old in enumerate(olds):
            fresh = [
                (self._rotate(li, s.layers[li][2], off), s.layers[li][3])
                for s, off in zip(new, offsets[len(offsets) - len(new) :], strict=True)
            ]
            layers.append((convs[li], recs[li], *_padded_kv(old, keep_t, fresh, width)))
        if clock > self.window_keep + REBASE_AFTER:  # keep RoPE angles small: move every row back in time
            shift = clock - self.window_keep
            layers = [(c, r, self._rotate(li, k, -shift), v) for li, (c, r, k, v) in enumerate(layers)]
            clock, offsets = clock - shift, [o - shift for o in offsets]
        extra = {"counts": counts, "clock": clock, "offsets": offsets}
        return Batch(self._install(self._new_cache(), layers, clock), lengths, extra)

    @torch.inference_mode()
    def decode(self, batch: Batch, tokens: list[int]) -> torch.Tensor:
        """One step for every row; returns next-token logits [B, V] and advances the batch."""
        x = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        mask = None
        if self.is_plus:
            clock, counts = batch.extra["clock"], batch.extra["counts"]
            width = batch.cache.layers[0].keys.shape[-2]
            if any(c < width for c in counts):
                mask = torch.ones(batch.size, clock + 1, dtype=torch.long, device=self.device)
                for i, c in enumerate(counts):
                    if c < width:
                        mask[i, clock - width : clock - c] = 0
        out = self.model(
            input_ids=x, attention_mask=mask, cache=batch.cache, use_cache=True, logits_to_keep=1
        )
        batch.lengths = [n + 1 for n in batch.lengths]
        if self.is_plus:
            batch.extra["clock"] += 1
            batch.extra["counts"] = [min(c + 1, self.window_keep) for c in batch.extra["counts"]]
            w = batch.cache.layers[0].keys.shape[-2]
            if max(batch.extra["counts"]) < w:  # every row's oldest slot is padding: drop it
                for layer in batch.cache.layers:
                    layer.keys, layer.values = layer.keys[..., 1:, :], layer.values[..., 1:, :]
        return out.logits[:, -1].float()

    def row_state(self, batch: Batch, i: int) -> RowState:
        layers = []
        for li, layer in enumerate(batch.cache.layers):
            t = [layer.conv_states[0][i : i + 1].clone(), layer.recurrent_states[0][i : i + 1].clone()]
            if self.is_plus:
                c = batch.extra["counts"][i]
                k = layer.keys[i : i + 1, :, layer.keys.shape[-2] - c :, :]
                t += [
                    self._rotate(li, k, -batch.extra["offsets"][i]).clone(),
                    layer.values[i : i + 1, :, layer.values.shape[-2] - c :, :].clone(),
                ]
            layers.append(tuple(t))
        return RowState(layers, batch.lengths[i])


class KVBackend(_Backend):
    """A transformers causal LM with a plain growing KV cache (the Llama-style baseline)."""

    def _install(self, cache: DynamicCache, layers: list[tuple]) -> DynamicCache:
        for layer, (k, v) in zip(cache.layers, layers, strict=True):
            layer.keys, layer.values = k, v
            layer.is_initialized = True
            layer.device, layer.dtype = k.device, k.dtype
        return cache

    def _cache_for_prefill(self, state: RowState) -> DynamicCache:
        return self._install(self._new_cache(), state.clone().layers)

    def _prefill_kwargs(self, past: int, n: int) -> dict:
        return {"position_ids": torch.arange(past, past + n, device=self.device)[None]}

    def _row_from_cache(self, cache: DynamicCache, length: int) -> RowState:
        return RowState([(layer.keys, layer.values) for layer in cache.layers], length)

    def merge(self, batch: Batch | None, keep: list[int], new: list[RowState]) -> Batch | None:
        plan = self._merge_plan(batch, keep, new)
        if plan is None:
            return None
        keep_t, lengths = plan
        kept = keep_t is not None
        width = max(lengths)
        layers = []
        for li in range(len(self._new_cache().layers) if not kept else len(batch.cache.layers)):
            old = batch.cache.layers[li] if kept else None
            layers.append(_padded_kv(old, keep_t, [s.layers[li][:2] for s in new], width))
        return Batch(self._install(self._new_cache(), layers), lengths)

    @torch.inference_mode()
    def decode(self, batch: Batch, tokens: list[int]) -> torch.Tensor:
        x = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        width = batch.cache.layers[0].keys.shape[-2]
        lengths = torch.tensor(batch.lengths, device=self.device)
        mask = (torch.arange(width + 1, device=self.device)[None, :] >= (width - lengths)[:, None]).long()
        out = self.model(
            input_ids=x,
            attention_mask=mask,
            position_ids=lengths[:, None],
            cache=batch.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        batch.lengths = [n + 1 for n in batch.lengths]
        return out.logits[:, -1].float()

    def row_state(self, batch: Batch, i: int) -> RowState:
        n = batch.lengths[i]
        return RowState(
            [
                (layer.keys[i : i + 1, :, -n:, :].clone(), layer.values[i : i + 1, :, -n:, :].clone())
                for layer in batch.cache.layers
            ],
            n,
        )


def make_backend(model, static_decode: bool | None = None, max_batch_size: int = 64):
    """Pick the state backend for ``model``: Rodimus family (static decode when ``static_decode`` is
    None or True, else eager over a ``DynamicCache``) or a KV-cache causal LM (eager only)."""
    is_rodimus = getattr(model.config, "model_type", None) == "rodimus"
    if static_decode and not is_rodimus:
        raise ValueError(
            f"static_decode=True needs a Rodimus / Rodimus+ model, got model_type "
            f"{getattr(model.config, 'model_type', None)!r} (use None or False)"
        )
    if not is_rodimus:
        return KVBackend(model)
    if static_decode is None or static_decode:
        from rodimus.serve.static_state import StaticBackend

        return StaticBackend(model, max_batch_size)
    return RecurrentBackend(model)
