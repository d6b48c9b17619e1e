"""Per-request sampling over a batch of logits, incremental detokenisation and stop strings.

transformers' logits warpers take one set of parameters per call; a continuous batch mixes requests
with different temperatures, top-k/top-p and penalties, so this applies them row-wise in one pass
(same order and semantics as transformers: repetition penalty, temperature, top-k, top-p).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

MAX_STOP_STRINGS = 16


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16  # new tokens to generate at most (>= 1)
    temperature: float = 1.0  # 0 = greedy (argmax); otherwise logits are divided by it
    top_k: int = 0  # keep only the k most likely tokens; 0 = off
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p; 1 = off
    repetition_penalty: float = 1.0  # CTRL-style penalty on tokens already in prompt or output; 1 = off
    seed: int | None = None  # makes sampling reproducible; None = fresh random seed
    stop: tuple[str, ...] = ()  # generation ends before the first occurrence of any of these strings
    ignore_eos: bool = False  # keep generating past the end-of-sequence token

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str, value: object) -> ValueError:
            return ValueError(f"{name} must be {allowed}, got {value!r}")

        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise bad("max_tokens", "an int >= 1", self.max_tokens)
        if not (isinstance(self.temperature, (int, float)) and 0.0 <= self.temperature <= 100.0):
            raise bad("temperature", "a number in [0, 100]", self.temperature)
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise bad("top_k", "an int >= 0", self.top_k)
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise bad("top_p", "a number in (0, 1]", self.top_p)
        if not (isinstance(self.repetition_penalty, (int, float)) and 0.0 < self.repetition_penalty <= 100.0):
            raise bad("repetition_penalty", "a number in (0, 100]", self.repetition_penalty)
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise bad("seed", "an int in [0, 2**63)", self.seed)
        if len(self.stop) > MAX_STOP_STRINGS or any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", f"at most {MAX_STOP_STRINGS} non-empty strings", self.stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class RowSampler:
    """Per-request sampling state: parameters, RNG and the set of tokens seen (for the penalty)."""

    params: SamplingParams
    vocab_size: int
    generator: torch.Generator = field(init=False)
    seen: torch.Tensor | None = field(init=False, default=None)  # bool [V], only when a penalty is set

    def __post_init__(self) -> None:
        self.generator = torch.Generator()
        seed = self.params.seed if self.params.seed is not None else secrets.randbits(63)
        self.generator.manual_seed(seed)
        if self.params.repetition_penalty != 1.0:
            self.seen = torch.zeros(self.vocab_size, dtype=torch.bool)

    def observe(self, token_ids: Sequence[int]) -> None:
        if self.seen is not None and len(token_ids):
            ids = torch.as_tensor(list(token_ids), dtype=torch.long)
            self.seen[ids[(ids >= 0) & (ids < self.vocab_size)]] = True


def process_logits(logits: torch.Tensor, rows: Sequence[RowSampler]) -> torch.Tensor:
    """Apply each row's penalty, temperature, top-k and top-p; returns float32 [B, V] (-inf = removed).

    Greedy rows get only the penalty (temperature and the truncations do not change an argmax).
    """
    out = logits.float().clone()
    B, V = out.shape
    for i, r in enumerate(rows):
        if r.seen is not None:
            idx = r.seen.nonzero().squeeze(1)
            if idx.numel():
                vals = out[i, idx]
                p = r.params.repetition_penalty
                out[i, idx] = torch.where(vals < 0, vals * p, vals / p)
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if not sampled:
        return out
    idx = torch.tensor(sampled)
    sub = out[idx] / torch.tensor([rows[i].params.temperature for i in sampled], dtype=torch.float32)[:, None]
    ks = torch.tensor([rows[i].params.top_k or V for i in sampled])
    ps = torch.tensor([rows[i].params.top_p for i in sampled], dtype=torch.float32)
    if bool((ks < V).any()) or bool((ps < 1.0).any()):
        sorted_vals, order = sub.sort(dim=-1, descending=True)
        rank = torch.arange(V)[None, :]
        drop = rank >= ks[:, None]
        # top-k ties: transformers keeps every token whose logit equals the k-th largest
        kth = sorted_vals.gather(1, (ks.clamp(max=V) - 1)[:, None])
        drop &= sorted_vals < kth
        sorted_vals = sorted_vals.masked_fill(drop, -math.inf)
        probs = sorted_vals.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability mass ranked strictly above each token
        drop_p = (before >= ps[:, None]) & (ps[:, None] < 1.0)
        drop_p[:, 0] = False  # always keep the most likely token
        sorted_vals = sorted_vals.masked_fill(drop_p, -math.inf)
        sub = torch.empty_like(sub).scatter_(1, order, sorted_vals)
    out[idx] = sub
    return out


def sample_next(logits: torch.Tensor, rows: Sequence[RowSampler]) -> list[int]:
    """One next token per row of ``logits`` [B, V], each drawn with its own row's parameters and RNG."""
    if all(r.params.greedy and r.seen is None for r in rows):
        return logits.argmax(dim=-1).tolist()
    proc = process_logits(logits, rows)
    tokens = proc.argmax(dim=-1).tolist()
    for i, r in enumerate(rows):
        if not r.params.greedy:
            probs = proc[i].softmax(dim=-1)
            tokens[i] = int(torch.multinomial(probs, 1, generator=r.generator))
    return tokens


class IncrementalDetokenizer:
    """Turns a growing token list into text deltas without re-decoding everything each step.

    Decodes a short window (a few tokens of context + the new ones) and emits only what the new tokens
    add; a trailing U+FFFD means a multi-byte character is incomplete, so the text is held back.
    """

    def __init__(self, tokenizer, prompt_ids: Sequence[int] = (), context: int = 5) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_ids[-context:]) if context else []
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever the last tokens still hold back (an incomplete character is emitted as is)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :]


class StopStringMatcher:
    """Finds stop strings in streamed text, holding back only what could still become one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit). After a hit, stop feeding."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
