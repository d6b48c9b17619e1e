from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from rodimus.serve.engine import Engine, EngineConfig
from rodimus.serve.sampling import SamplingParams
from tests.serve.conftest import load, offline_greedy


def _prompts(tok, n: int) -> list[list[int]]:
    return [
        tok(f"x = {i}\n" + f"def f{i}(a, b):\n    return a\n" * (1 + i % 7)).input_ids[: 3 + 9 * i]
        for i in range(n)
    ]


@pytest.mark.parametrize("which", ["rodimus_dir", "rodimus_plus_dir"])
def test_continuous_batching_equals_offline_greedy(which, request):
    model, tok = load(request.getfixturevalue(which))
    engine = Engine(model, tok, EngineConfig(max_batch_size=6, prefix_cache_bytes=0)).start()
    try:
        prompts = _prompts(tok, 18)
        lengths = [4 + (i * 5) % 17 for i in range(len(prompts))]  # rows leave at different steps
        handles = [
            engine.submit(p, SamplingParams(max_tokens=n, temperature=0))
            for p, n in zip(prompts, lengths, strict=True)
        ]
        got = [[t for out in h for t in out.token_ids] for h in handles]
        assert engine.counters["max_active"] == 6
        assert engine.counters["decode_rows"] > engine.counters["decode_steps"]  # steps really were batched
    finally:
        engine.stop()
    for p, n, g in zip(prompts, lengths, got, strict=True):
        assert g == offline_greedy(model, p, n, tok.eos_token_id)


@pytest.mark.parametrize("which", ["rodimus_dir", "rodimus_plus_dir"])
def test_prefix_snapshot_skips_prefill_and_keeps_output(which, request):
    model, tok = load(request.getfixturevalue(which))
    engine = Engine(model, tok, EngineConfig(max_batch_size=4)).start()
    prompt = tok(Path(__file__).read_text() * 3).input_ids[:3000]
    params = SamplingParams(max_tokens=12, temperature=0)

    def run(ids):
        before = engine.counters["prefill_tokens"]
        t0 = time.perf_counter()
        ttft, toks = None, []
        for out in engine.submit(ids, params):
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            toks += out.token_ids
        return toks, ttft, engine.counters["prefill_tokens"] - before

    try:
        first, ttft1, read1 = run(prompt)
        second, ttft2, read2 = run(prompt)
        suffix = tok(" # a new question").input_ids
        third, _, read3 = run(prompt + suffix)
    finally:
        engine.stop()
    print(
        f"\n{which}: prompt {len(prompt)} tokens; TTFT cold {ttft1 * 1e3:.1f} ms, "
        f"from snapshot {ttft2 * 1e3:.2f} ms ({ttft1 / ttft2:.0f}x)"
    )
    assert read1 == len(prompt) and read2 == 0 and read3 == len(suffix)
    assert second == first == offline_greedy(model, prompt, 12, tok.eos_token_id)
    assert third == offline_greedy(model, prompt + suffix, 12, tok.eos_token_id)
    assert engine.prefix_cache.bytes <= engine.prefix_cache.capacity_bytes


def test_cancel_and_timeout_free_the_slot(rodimus_dir):
    model, tok = load(rodimus_dir)
    engine = Engine(model, tok, EngineConfig(max_batch_size=1, prefix_cache_bytes=0)).start()
    try:
        long = SamplingParams(max_tokens=100_000, temperature=0, ignore_eos=True)
        h = engine.submit([1, 2, 3], long)
        waiting = engine.submit([4, 5], SamplingParams(max_tokens=3, temperature=0))
        next(iter(h))  # first token out: it holds the only slot
        h.cancel()
        outs = list(h)
        assert outs[-1].finish_reason == "cancelled"
        assert list(waiting)[-1].finish_reason in ("length", "stop")  # got the freed slot
        timed = list(engine.submit([1, 2], long, timeout=0.2))
        assert timed[-1].finish_reason == "timeout"
        time.sleep(0.1)
        s = engine.stats()
        assert s["active"] == 0 and s["waiting"] == 0 and s["state_bytes"] == 0
    finally:
        engine.stop()


def test_bad_prompt_is_rejected(rodimus_dir):
    model, tok = load(rodimus_dir)
    engine = Engine(model, tok, EngineConfig(max_context=64))
    with pytest.raises(ValueError, match="token ids"):
        engine.submit([len(tok) + 5], SamplingParams())
    with pytest.raises(ValueError, match="context limit"):
        engine.submit([1] * 60, SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="at least one token"):
        engine.submit([], SamplingParams())


def _staggered(model, tok, static: bool, max_batch_size: int = 5) -> list[list[int]]:
    """Requests that join and leave at different steps, so rows move between buckets and positions."""
    engine = Engine(
        model, tok, EngineConfig(max_batch_size=max_batch_size, prefix_cache_bytes=0, static_decode=static)
    ).start()
    try:
        prompts = _prompts(tok, 11)
        lengths = [3 + (i * 7) % 23 for i in range(len(prompts))]
        handles, first = [], []
        for i, (p, n) in enumerate(zip(prompts, lengths, strict=True)):
            handles.append(iter(engine.submit(p, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))))
            # let some steps run before the next arrivals
            first.append(next(handles[-1]).token_ids if i % 3 == 2 else [])
        got = [f + [t for out in h for t in out.token_ids] for f, h in zip(first, handles, strict=True)]
        assert engine.counters["decode_rows"] > engine.counters["decode_steps"]
    finally:
        engine.stop()
    return got


@pytest.mark.parametrize("which", ["rodimus_dir", "rodimus_plus_dir"])
def test_static_decode_equals_eager_decode(which, request):
    from rodimus.serve.state import RecurrentBackend
    from rodimus.serve.static_state import StaticBackend

    model, tok = load(request.getfixturevalue(which))
    assert isinstance(Engine(model, tok).backend, StaticBackend)  # the default for Rodimus models
    eager = Engine(model, tok, EngineConfig(static_decode=False)).backend
    assert isinstance(eager, RecurrentBackend) and not isinstance(eager, StaticBackend)
    got_static, got_eager = _staggered(model, tok, True), _staggered(model, tok, False)
    assert [len(g) for g in got_static] == [3 + (i * 7) % 23 for i in range(11)]
    assert got_static == got_eager


@pytest.mark.parametrize("which", ["rodimus_dir", "rodimus_plus_dir"])
def test_static_rows_round_trip_to_row_state(which, request):
    """Rows written into a bucket and read back are the eager state (what prefix snapshots store)."""
    model, tok = load(request.getfixturevalue(which))
    static = Engine(model, tok, EngineConfig(max_batch_size=4, static_decode=True)).backend
    eager = Engine(model, tok, EngineConfig(max_batch_size=4, static_decode=False)).backend
    states = [eager.prefill(p, None)[1] for p in _prompts(tok, 3)]
    e_batch, s_batch = eager.merge(None, [], states), static.merge(None, [], states)
    for _ in range(5):
        toks = [7, 11, 13]
        assert torch.allclose(eager.decode(e_batch, toks), static.decode(s_batch, toks), atol=1e-4, rtol=1e-4)
    e_batch, s_batch = eager.merge(e_batch, [0, 2], []), static.merge(s_batch, [0, 2], [])  # bucket 4 -> 2
    assert s_batch.decoder.batch_size == 2
    for i in range(2):
        a, b = eager.row_state(e_batch, i), static.row_state(s_batch, i)
        assert a.length == b.length
        for la, lb in zip(a.layers, b.layers, strict=True):
            for ta, tb in zip(la, lb, strict=True):
                assert ta.shape == tb.shape and ta.dtype == tb.dtype
                assert torch.allclose(ta, tb, atol=1e-5, rtol=1e-4)


def test_static_decode_needs_a_rodimus_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64)
    with pytest.raises(ValueError, match="static_decode"):
        Engine(LlamaForCausalLM(cfg), None, EngineConfig(static_decode=True))


@pytest.mark.parametrize("which", ["rodimus_dir", "rodimus_plus_dir"])
def test_finish_snapshot_from_static_rows_continues_a_chat(which, request):
    """The state a finished row leaves (read back out of a static bucket) serves the next turn."""
    model, tok = load(request.getfixturevalue(which))
    engine = Engine(model, tok, EngineConfig(max_batch_size=4, static_decode=True)).start()
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    try:
        prompts = _prompts(tok, 4)[1:]
        firsts = [[t for out in h for t in out.token_ids] for h in [engine.submit(p, params) for p in prompts]]
        suffix = tok(" # next").input_ids
        before = engine.counters["prefill_tokens"]
        turn2 = [p + f + suffix for p, f in zip(prompts, firsts, strict=True)]
        seconds = [engine.generate(t, params).token_ids for t in turn2]
        read = engine.counters["prefill_tokens"] - before
    finally:
        engine.stop()
    assert read == len(turn2) * (len(suffix) + 1)  # only the last output token and the suffix were read
    for t, s in zip(turn2, seconds, strict=True):
        assert s == offline_greedy(model, t, 20, tok.eos_token_id)
