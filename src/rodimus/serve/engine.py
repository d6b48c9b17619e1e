"""Continuous batching: one scheduler thread decodes every active request in one batched step.

Each loop iteration (a token boundary): drop cancelled / timed-out / finished rows, prefill waiting
requests (alone, so their prompt is read exactly as offline generation reads it; long prompts in
chunks so the other streams keep moving), then run one batched decode step for all active rows.
Each active request holds a fixed-size state, so memory is bounded by ``max_batch_size``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from rodimus.serve.prefix_cache import PrefixCache
from rodimus.serve.sampling import (
    IncrementalDetokenizer,
    RowSampler,
    SamplingParams,
    StopStringMatcher,
    sample_next,
)
from rodimus.serve.state import Batch, RowState, make_backend
from rodimus.serve.static_state import StaticBatch


@dataclass
class EngineConfig:
    max_batch_size: int = 64  # requests decoded together (each holds one state)
    max_queue: int = 1024  # waiting requests beyond which submit() refuses (QueueFull)
    prefill_chunk: int = 2048  # prompt tokens per prefill forward; longer prompts are read in pieces
    prefill_budget: int = 4096  # prompt tokens read per iteration before the next decode step
    prefix_cache_bytes: int = 256 * 2**20  # byte budget of the state-snapshot LRU (0 = off)
    snapshot_on_finish: bool = True  # also keep the state after prompt + completion (multi-turn chats)
    max_context: int = 1_000_000  # prompt + new tokens allowed per request
    static_decode: bool | None = None  # Rodimus: decode via StaticDecoder buckets (None = on; False = eager)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "prefill_chunk", "prefill_budget", "max_context"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"EngineConfig.{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.prefix_cache_bytes, int) or self.prefix_cache_bytes < 0:
            raise ValueError(
                f"EngineConfig.prefix_cache_bytes must be an int >= 0, got {self.prefix_cache_bytes!r}"
            )
        if self.static_decode not in (None, True, False):
            raise ValueError(f"EngineConfig.static_decode must be None, True or False, got {self.static_decode!r}")


class QueueFull(RuntimeError):
    """Too many requests are waiting."""


@dataclass
class StepOutput:
    text: str  # new text since the previous output (may be empty)
    token_ids: list[int]  # new tokens since the previous output
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "timeout" | "cancelled" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass(eq=False)
class Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    deadline: float | None
    sink: object  # callable(StepOutput), thread-safe
    sampler: RowSampler
    submitted: float = field(default_factory=time.perf_counter)
    output: list[int] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False
    state: RowState | None = None  # during prefill
    pos: int = 0  # prompt tokens read
    detok: IncrementalDetokenizer | None = None
    stops: StopStringMatcher | None = None
    first_token_time: float | None = None
    cached_logits: torch.Tensor | None = None  # next-token logits from a whole-prompt snapshot
    finish_reason_ok: bool = False  # finished normally (its final state is worth a snapshot)


class RequestHandle:
    """What submit() returns: iterate it (sync or async) for StepOutputs; cancel() frees the slot."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop | None) -> None:
        self._engine = engine
        self._loop = loop
        self._q: asyncio.Queue | queue.SimpleQueue = asyncio.Queue() if loop else queue.SimpleQueue()
        self.request: Request | None = None

    def _push(self, out: StepOutput) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
                self._loop.call_soon_threadsafe(self._q.put_nowait, out)
        else:
            self._q.put(out)

    def cancel(self) -> None:
        if self.request is not None and not self.request.finished:
            self.request.cancelled = True
            self._engine._wake()

    def __iter__(self) -> Iterator[StepOutput]:
        while True:
            out = self._q.get()
            yield out
            if out.finished:
                return

    async def __aiter__(self) -> AsyncIterator[StepOutput]:
        while True:
            out = await self._q.get()
            yield out
            if out.finished:
                return


class Engine:
    def __init__(
        self, model, tokenizer=None, config: EngineConfig | None = None, eos_token_ids: Sequence[int] = ()
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self.backend = make_backend(model, self.config.static_decode, self.config.max_batch_size)
        self.vocab_size = self.backend.vocab_size
        self.eos = set(eos_token_ids) if eos_token_ids else _eos_ids(model, tokenizer)
        self.prefix_cache = PrefixCache(self.config.prefix_cache_bytes)
        self._waiting: deque[Request] = deque()
        self._prefilling: list[Request] = []
        self._active: list[Request] = []
        self._batch: Batch | StaticBatch | None = None
        self._cv = threading.Condition()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.counters = {
            "prefill_tokens": 0,
            "decode_steps": 0,
            "decode_rows": 0,
            "requests": 0,
            "finished": 0,
            "max_active": 0,
            "max_state_bytes": 0,
        }

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Engine:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="rodimus-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    # ---- public API ----------------------------------------------------------------------------
    def submit(
        self, prompt: Sequence[int], params: SamplingParams, timeout: float | None = None
    ) -> RequestHandle:
        """Queue a request; raises ValueError for a bad prompt and QueueFull when the queue is full."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("prompt must contain at least one token")
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise ValueError(f"prompt token ids must lie in [0, {self.vocab_size})")
        if len(prompt) + params.max_tokens > self.config.max_context:
            raise ValueError(
                f"prompt tokens ({len(prompt)}) + max_tokens ({params.max_tokens}) exceed the "
                f"context limit {self.config.max_context}"
            )
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        handle = RequestHandle(self, loop)
        deadline = time.perf_counter() + timeout if timeout else None
        req = Request(
            next(self._ids), prompt, params, deadline, handle._push, RowSampler(params, self.vocab_size)
        )
        handle.request = req
        with self._cv:
            if len(self._waiting) >= self.config.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(req)
            self.counters["requests"] += 1
            self._cv.notify_all()
        return handle

    def generate(
        self, prompt: Sequence[int], params: SamplingParams, timeout: float | None = None
    ) -> StepOutput:
        """Blocking convenience: the whole completion as one StepOutput (text and tokens joined)."""
        text, ids, last = [], [], None
        for out in self.submit(prompt, params, timeout):
            text.append(out.text)
            ids += out.token_ids
            last = out
        return StepOutput(
            "".join(text),
            ids,
            True,
            last.finish_reason,
            last.prompt_tokens,
            last.completion_tokens,
            last.error,
        )

    def stats(self) -> dict:
        with self._cv:
            state_bytes = sum(r.state.nbytes for r in self._prefilling if r.state is not None) + (
                self.backend.batch_nbytes(self._batch) if self._batch is not None else 0
            )
            return {
                **self.counters,
                "waiting": len(self._waiting),
                "prefilling": len(self._prefilling),
                "active": len(self._active),
                "state_bytes": state_bytes,
                "prefix_cache": self.prefix_cache.stats(),
            }

    # ---- scheduler -----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._stop or self._waiting or self._prefilling or self._active):
                    self._cv.wait()
                if self._stop:
                    break
            try:
                self._iteration()
            except Exception as exc:  # a model error must not hang every client: fail them all
                self._fail_all(f"{type(exc).__name__}: {exc}")
        self._fail_all("server shutting down", reason="cancelled")

    def _iteration(self) -> None:
        now = time.perf_counter()
        with self._cv:
            for r in list(self._waiting):
                if r.cancelled or (r.deadline and now > r.deadline):
                    self._waiting.remove(r)
                    self._finish(r, "cancelled" if r.cancelled else "timeout")
        for r in list(self._prefilling):
            if r.cancelled or (r.deadline and now > r.deadline):
                self._prefilling.remove(r)
                self._finish(r, "cancelled" if r.cancelled else "timeout")
        for r in self._active:
            if not r.finished and (r.cancelled or (r.deadline and now > r.deadline)):
                self._finish(r, "cancelled" if r.cancelled else "timeout")

        keep = [i for i, r in enumerate(self._active) if not r.finished]
        if len(keep) < len(self._active) and self.config.snapshot_on_finish and self._batch is not None:
            # before any prefill: a follow-up turn that arrived meanwhile must find this state
            for i, r in enumerate(self._active):
                if r.finished and r.finish_reason_ok and len(r.output) > 1:
                    self._snapshot(r.prompt + r.output[:-1], self.backend.row_state(self._batch, i), None)
        joined = self._prefill_some()
        if keep != list(range(len(self._active))) or joined:
            self._batch = self.backend.merge(self._batch, keep, [r.state for r in joined])
            self._active = [self._active[i] for i in keep] + joined
            for r in joined:
                r.state = None  # the batch holds it now
        if not self._active:
            self._batch = None
            return
        self.counters["max_active"] = max(self.counters["max_active"], len(self._active))
        self.counters["max_state_bytes"] = max(
            self.counters["max_state_bytes"], self.backend.batch_nbytes(self._batch)
        )
        logits = self.backend.decode(self._batch, [r.output[-1] for r in self._active])
        self.counters["decode_steps"] += 1
        self.counters["decode_rows"] += len(self._active)
        tokens = sample_next(logits, [r.sampler for r in self._active])
        for r, t in zip(self._active, tokens, strict=True):
            self._emit(r, t)

    def _prefill_some(self) -> list[Request]:
        """Read up to ``prefill_budget`` prompt tokens; returns requests whose prompt is done (to join)."""
        budget, joined = self.config.prefill_budget, []
        while budget > 0:
            if not self._prefilling:
                with self._cv:
                    slots = self.config.max_batch_size - len(self._active) - len(joined)
                    if slots <= 0 or not self._waiting:
                        break
                    r = self._waiting.popleft()
                self._start_prefill(r)
                if r.finished:
                    continue
                if r.pos == len(r.prompt):  # whole prompt found in the snapshot cache
                    joined += self._first_token(r, r.cached_logits)
                    continue
                self._prefilling.append(r)
            r = self._prefilling[0]
            n = min(budget, self.config.prefill_chunk, len(r.prompt) - r.pos)
            logits, r.state = self.backend.prefill(r.prompt[r.pos : r.pos + n], r.state)
            r.pos += n
            budget -= n
            self.counters["prefill_tokens"] += n
            if r.pos == len(r.prompt):
                self._prefilling.pop(0)
                self._snapshot(r.prompt, r.state.clone(), logits)
                joined += self._first_token(r, logits)
        return joined

    def _start_prefill(self, r: Request) -> None:
        r.sampler.observe(r.prompt)
        if self.tokenizer is not None:
            r.detok = IncrementalDetokenizer(self.tokenizer, r.prompt)
            r.stops = StopStringMatcher(r.params.stop)
        r.cached_logits = None
        snap = self.prefix_cache.lookup(r.prompt) if self.config.prefix_cache_bytes else None
        if snap is not None:
            r.state, r.pos = snap.state.clone(), len(snap.tokens)
            if r.pos == len(r.prompt):
                r.cached_logits = snap.logits

    def _first_token(self, r: Request, logits: torch.Tensor) -> list[Request]:
        token = sample_next(logits[None], [r.sampler])[0]
        self._emit(r, token)
        return [] if r.finished else [r]

    def _snapshot(self, tokens: list[int], state: RowState, logits: torch.Tensor | None) -> None:
        if self.config.prefix_cache_bytes:
            self.prefix_cache.put(tokens, state, None if logits is None else logits.clone(), state.nbytes)

    def _emit(self, r: Request, token: int) -> None:
        if r.finished:
            return
        if r.first_token_time is None:
            r.first_token_time = time.perf_counter()
        r.output.append(token)
        r.sampler.observe((token,))
        reason, hit = None, False
        if token in self.eos and not r.params.ignore_eos:
            reason, text = "stop", ""
        else:
            text = r.detok.push(token) if r.detok is not None else ""
        if r.stops is not None:
            text, hit = r.stops.feed(text)
        if hit:
            reason = "stop"
        elif reason is None and len(r.output) >= r.params.max_tokens:
            reason = "length"
        if reason is None:
            r.sink(StepOutput(text, [token], prompt_tokens=len(r.prompt), completion_tokens=len(r.output)))
            return
        if not hit:
            tail = r.detok.flush() if r.detok is not None else ""
            if r.stops is not None:
                tail, hit = r.stops.feed(tail)
                text += tail + ("" if hit else r.stops.flush())
            else:
                text += tail
        self._finish(r, reason, text, [token])

    def _finish(
        self,
        r: Request,
        reason: str,
        text: str = "",
        tokens: list[int] | None = None,
        error: str | None = None,
    ) -> None:
        if r.finished:
            return
        r.finished = True
        r.finish_reason_ok = reason in ("stop", "length")
        r.state = None
        self.counters["finished"] += 1
        r.sink(StepOutput(text, tokens or [], True, reason, len(r.prompt), len(r.output), error))

    def _fail_all(self, message: str, reason: str = "error") -> None:
        with self._cv:
            victims = list(self._waiting) + self._prefilling + self._active
            self._waiting.clear()
        self._prefilling, self._active, self._batch = [], [], None
        for r in victims:
            self._finish(r, reason, error=message)


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(int(x) for x in e)
    return ids
