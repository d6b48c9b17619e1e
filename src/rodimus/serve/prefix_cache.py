"""State snapshots keyed by token prefix, in an LRU bounded by bytes.

A Rodimus state after reading a prefix is a few fixed-size tensors, so keeping it is cheap and
resuming from it skips re-reading the prefix entirely. Lookup finds the longest stored prefix of a
prompt in one pass over the prompt (a rolling hash per length; stored token tuples confirm a match).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_MOD = (1 << 61) - 1
_BASE = 1_000_003
_PER_TOKEN_BYTES = 8  # a stored key costs about one pointer per token


@dataclass
class Snapshot:
    tokens: tuple[int, ...]  # the exact prefix this state has read
    state: Any  # backend-specific per-request state (never mutated once stored)
    logits: Any  # next-token logits after the prefix [V], or None; lets an identical prompt skip prefill
    nbytes: int  # bytes charged against the cache budget


class PrefixCache:
    def __init__(self, capacity_bytes: int) -> None:
        if not isinstance(capacity_bytes, int) or capacity_bytes < 0:
            raise ValueError(f"prefix cache capacity_bytes must be an int >= 0, got {capacity_bytes!r}")
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[tuple[int, int], Snapshot] = OrderedDict()  # (length, hash) -> snapshot
        self._lengths: Counter[int] = Counter()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @staticmethod
    def _hashes(tokens: Sequence[int]) -> list[int]:
        h, out = 0, [0]
        for t in tokens:
            h = (h * _BASE + int(t) + 1) % _MOD
            out.append(h)
        return out

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, tokens: Sequence[int], state: Any, logits: Any, state_nbytes: int) -> bool:
        """Store a snapshot (the caller hands over ownership of ``state``); returns whether it was kept."""
        tokens = tuple(int(t) for t in tokens)
        if not tokens:
            return False
        nbytes = state_nbytes + len(tokens) * _PER_TOKEN_BYTES
        if logits is not None:
            nbytes += logits.numel() * logits.element_size()
        if nbytes > self.capacity_bytes:
            return False
        key = (len(tokens), self._hashes(tokens)[-1])
        with self._lock:
            old = self._entries.get(key)
            if old is not None and old.tokens == tokens and (logits is None or old.logits is not None):
                self._entries.move_to_end(key)  # same state already stored (and at least as useful)
                return True
            if old is not None:
                del self._entries[key]
                self.bytes -= old.nbytes
                self._lengths[key[0]] -= 1
            self._entries[key] = Snapshot(tokens, state, logits, nbytes)
            self._lengths[key[0]] += 1
            self.bytes += nbytes
            while self.bytes > self.capacity_bytes:
                k, snap = self._entries.popitem(last=False)
                self.bytes -= snap.nbytes
                self._lengths[k[0]] -= 1
                if not self._lengths[k[0]]:
                    del self._lengths[k[0]]
                self.evictions += 1
        return True

    def lookup(self, tokens: Sequence[int]) -> Snapshot | None:
        """The snapshot of the longest stored prefix of ``tokens`` that still leaves a token to read,
        or of all of ``tokens`` when it carries the next-token logits."""
        n = len(tokens)
        if not n or not self._entries:
            with self._lock:
                self.misses += 1
            return None
        hashes = self._hashes(tokens)
        with self._lock:
            for length in sorted(self._lengths, reverse=True):
                if length > n:
                    continue
                snap = self._entries.get((length, hashes[length]))
                if snap is None or (length == n and snap.logits is None):
                    continue
                if snap.tokens != tuple(tokens[:length]):
                    continue
                self._entries.move_to_end((length, hashes[length]))
                self.hits += 1
                return snap
            self.misses += 1
        return None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._lengths.clear()
            self.bytes = 0

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self.bytes,
            "capacity_bytes": self.capacity_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
