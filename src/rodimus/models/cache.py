"""Generation-cache helpers. The cache itself is transformers' DynamicCache, whose layer kinds are
picked by ``RodimusConfig.layer_types``: ``LinearAttentionLayer`` (conv + recurrent state) for Rodimus,
``LinearAttentionAndSlidingWindowAttentionLayer`` (plus a key/value window) for Rodimus+."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache


def new_cache(config) -> DynamicCache:
    """An empty cache laid out for ``config`` (what ``generate`` and ``forward(use_cache=True)`` build)."""
    return DynamicCache(config=config)


def cache_tensors(cache: Cache) -> list[torch.Tensor]:
    """Every tensor the cache holds: conv states, recurrent states and (Rodimus+) windowed keys/values."""
    out: list[torch.Tensor] = []
    for layer in cache.layers:
        for store in (getattr(layer, "conv_states", {}), getattr(layer, "recurrent_states", {})):
            out.extend(t for t in store.values() if isinstance(t, torch.Tensor))
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                out.append(t)
    return out


def cache_nbytes(cache: Cache) -> int:
    """Bytes held by the cache: constant in context length for Rodimus, bounded by the window for Rodimus+."""
    return sum(t.numel() * t.element_size() for t in cache_tensors(cache))
