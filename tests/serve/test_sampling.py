from __future__ import annotations

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rodimus.serve.prefix_cache import PrefixCache
from rodimus.serve.sampling import (
    IncrementalDetokenizer,
    RowSampler,
    SamplingParams,
    StopStringMatcher,
    process_logits,
    sample_next,
)

V = 50


def _hf(logits: torch.Tensor, seen: list[int], p: SamplingParams) -> torch.Tensor:
    procs = LogitsProcessorList()
    if p.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
    procs.append(TemperatureLogitsWarper(p.temperature))
    if p.top_k:
        procs.append(TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        procs.append(TopPLogitsWarper(p.top_p))
    return procs(torch.tensor([seen]), logits[None].clone())[0]


def test_batched_processing_matches_transformers_warpers_row_by_row():
    torch.manual_seed(0)
    cases = [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.3, top_k=5),
        SamplingParams(temperature=1.0, top_p=0.8),
        SamplingParams(temperature=0.5, top_k=10, top_p=0.6, repetition_penalty=1.3),
        SamplingParams(temperature=2.0, repetition_penalty=0.8),
    ]
    logits = torch.randn(len(cases), V) * 3
    seen = [[1, 2, 3, 7], [4], [0, 49], [5, 6, 7, 8, 9, 10], [11, 12]]
    rows = []
    for p, s in zip(cases, seen, strict=True):
        r = RowSampler(p, V)
        r.observe(s)
        rows.append(r)
    ours = process_logits(logits, rows)
    for i, p in enumerate(cases):
        ref = _hf(logits[i], seen[i], p)
        assert torch.equal(torch.isinf(ours[i]), torch.isinf(ref)), f"row {i}: kept sets differ"
        keep = ~torch.isinf(ref)
        torch.testing.assert_close(ours[i][keep], ref[keep])


def test_greedy_is_argmax_and_seeded_sampling_reproduces():
    torch.manual_seed(1)
    logits = torch.randn(3, V)
    greedy = [RowSampler(SamplingParams(temperature=0), V) for _ in range(3)]
    assert sample_next(logits, greedy) == logits.argmax(-1).tolist()
    draws = []
    for _ in range(2):
        r = RowSampler(SamplingParams(temperature=1.0, top_p=0.9, seed=123), V)
        draws.append([sample_next(logits[:1], [r])[0] for _ in range(20)])
    assert draws[0] == draws[1]
    other = RowSampler(SamplingParams(temperature=1.0, top_p=0.9, seed=124), V)
    assert [sample_next(logits[:1], [other])[0] for _ in range(20)] != draws[0]
    # top_k=1 leaves one candidate: sampling must return the argmax
    r = RowSampler(SamplingParams(temperature=1.5, top_k=1, seed=5), V)
    assert sample_next(logits, [r] * 3) == logits.argmax(-1).tolist()


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_tokens", 0),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_k", -1),
        ("repetition_penalty", 0.0),
        ("seed", -3),
        ("stop", ("",)),
    ],
)
def test_sampling_params_reject_out_of_range(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_stop_strings_hold_back_only_possible_prefixes():
    m = StopStringMatcher(["END", "\n\n"])
    out = []
    for piece in ["hello E", "N", "x wor", "ld\n", "\nmore"]:
        text, hit = m.feed(piece)
        out.append(text)
        if hit:
            break
    assert out == ["hello ", "", "ENx wor", "ld", ""]
    assert hit
    m = StopStringMatcher(["abc"])
    assert m.feed("xxab") == ("xx", False)
    assert m.flush() == "ab"


def test_incremental_detokenizer_concatenates_to_full_decode(rodimus_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rodimus_dir)
    prompt = tok("import os\n").input_ids
    torch.manual_seed(0)
    ids = torch.randint(0, len(tok), (200,)).tolist()
    d = IncrementalDetokenizer(tok, prompt)
    text = "".join(d.push(t) for t in ids) + d.flush()
    assert text == tok.decode(ids, skip_special_tokens=True)


def test_prefix_cache_longest_prefix_and_byte_bound():
    state = torch.zeros(100)  # 400 bytes
    cache = PrefixCache(capacity_bytes=2000)
    logits = torch.zeros(10)
    assert cache.put([1, 2, 3], "s3", None, 400)
    assert cache.put([1, 2, 3, 4, 5], "s5", logits, 400)
    assert cache.lookup([1, 2, 3, 4, 5, 6]).state == "s5"
    assert cache.lookup([1, 2, 3, 4, 5]).state == "s5"  # whole prompt: usable because logits are stored
    assert cache.lookup([1, 2, 3]) is None  # whole prompt without logits leaves nothing to read
    assert cache.lookup([1, 2, 3, 9]).state == "s3"
    assert cache.lookup([2, 3]) is None
    for i in range(10):
        cache.put([7, i], f"x{i}", None, state.numel() * 4)
        assert cache.bytes <= cache.capacity_bytes
    assert cache.evictions > 0 and cache.lookup([1, 2, 3, 4, 5, 6]) is None  # least recently used went first
    assert cache.lookup([7, 9, 1]).state == "x9"
    assert not cache.put(list(range(10)), "huge", None, 5000)  # larger than the whole budget: not kept
