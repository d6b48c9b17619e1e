"""One model-test harness: each property is checked for every model configuration a test file lists."""

from __future__ import annotations

import torch

from rodimus import RodimusConfig, RodimusForCausalLM
from rodimus.models.cache import cache_nbytes
from tests.helpers import assert_close


def tiny_config(block_type: str, **overrides) -> RodimusConfig:
    kw = dict(block_type=block_type, d_model=64, n_layer=2, vocab_size=97, mixer_cfg=dict(mem_size=8),
              chunk_size=16, bos_token_id=None, eos_token_id=None)
    if block_type == "rodimus_plus":
        kw["attn_cfg"] = dict(num_heads=2, window_size=12)
    kw.update(overrides)
    return RodimusConfig(**kw)


def build(config: RodimusConfig, seed: int = 0) -> RodimusForCausalLM:
    torch.manual_seed(seed)
    model = RodimusForCausalLM(config).eval()
    with torch.no_grad():  # move gates and norms off their init values so every path matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def rand_ids(config, B, T, seed=1):
    return torch.randint(0, config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def check_prefill_then_decode_equals_full(model, T=40, P=7):
    """Cached decoding (prefill P tokens, then one token at a time, past the window) == full forward."""
    ids = rand_ids(model.config, 2, T)
    full = model(ids, use_cache=False).logits
    out = model(ids[:, :P], use_cache=True)
    cache, steps = out.cache, [out.logits]
    for t in range(P, T):
        out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
        cache = out.cache
        steps.append(out.logits)
    assert_close("decode logits", torch.cat(steps, 1), full, rel=1e-5, atol=1e-4)


@torch.no_grad()
def check_left_padding_equals_unpadded(model):
    """A left-padded batch with attention_mask gives each row the logits it gets alone."""
    a, b = rand_ids(model.config, 1, 15, seed=2), rand_ids(model.config, 1, 6, seed=3)
    pad = torch.zeros(1, 9, dtype=torch.long)
    batch = torch.cat([a, torch.cat([pad, b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :9] = 0
    logits = model(batch, attention_mask=mask).logits
    assert_close("row 0", logits[0], model(a).logits[0], rel=1e-5)
    assert_close("row 1", logits[1, 9:], model(b).logits[0], rel=1e-5)


@torch.no_grad()
def check_batched_generate_with_left_padding(model):
    a, b = rand_ids(model.config, 1, 15, seed=4), rand_ids(model.config, 1, 6, seed=5)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 9, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :9] = 0
    n = 20  # past the Rodimus+ window
    out = model.generate(batch, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0)
    alone_a = model.generate(a, max_new_tokens=n, do_sample=False)
    alone_b = model.generate(b, max_new_tokens=n, do_sample=False)
    assert torch.equal(out[0], alone_a[0])
    assert torch.equal(out[1, 9:], alone_b[0])


@torch.no_grad()
def check_greedy_generate_equals_argmax_loop(model):
    ids = rand_ids(model.config, 1, 5, seed=6)
    out = model.generate(ids, max_new_tokens=15, do_sample=False)
    seq = ids
    for _ in range(15):
        nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


@torch.no_grad()
def check_sampling_generate_is_seeded(model):
    ids = rand_ids(model.config, 2, 5, seed=7)
    kw = dict(max_new_tokens=10, do_sample=True, top_k=20, top_p=0.9, temperature=0.8)
    torch.manual_seed(11)
    a = model.generate(ids, **kw)
    torch.manual_seed(11)
    b = model.generate(ids, **kw)
    assert a.shape == (2, 15) and torch.equal(a, b)
    assert int(a.max()) < model.config.vocab_size


@torch.no_grad()
def check_packed_equals_separate(model):
    """cu_seqlens packing: no state or attention crosses a document start."""
    docs = [rand_ids(model.config, 1, n, seed=10 + n) for n in (5, 17, 1, 9)]
    packed = torch.cat(docs, 1)
    cu = torch.tensor([0, 5, 22, 23, 32])
    logits = model(packed, cu_seqlens=cu).logits
    for i, d in enumerate(docs):
        assert_close(f"doc {i}", logits[:, int(cu[i]) : int(cu[i + 1])], model(d).logits, rel=1e-5)


def check_packed_loss_ignores_boundaries(model):
    docs = [rand_ids(model.config, 1, n, seed=20 + n) for n in (6, 10)]
    packed = torch.cat(docs, 1)
    cu = torch.tensor([0, 6, 16])
    loss = model(packed, labels=packed, cu_seqlens=cu).loss
    l0, l1 = (model(d, labels=d).loss for d in docs)
    assert_close("loss", loss, (l0 * 5 + l1 * 9) / 14, rel=1e-5)


@torch.no_grad()
def cache_bytes_after(model, context: int) -> int:
    ids = rand_ids(model.config, 1, context, seed=30)
    out = model(ids, use_cache=True)
    out = model(ids[:, :1], cache=out.cache, use_cache=True)
    return cache_nbytes(out.cache)


def check_backward_matches_naive_backend(config):
    """Model gradients through the chunk ops equal those through the sequential references (float64)."""
    grads = {}
    for backend in ("torch", "naive"):
        model = build(RodimusConfig(**{**config.to_dict(), "kernel_backend": backend})).double().train()
        ids = rand_ids(config, 2, 21, seed=40)
        model(ids, labels=ids).loss.backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, g in grads["torch"].items():
        assert_close(name, g, grads["naive"][name], rel=1e-9)


@torch.no_grad()
def check_rope_positions_are_relative(model):
    """Explicit per-row position_ids shifted by a constant leave the logits unchanged (RoPE is relative)."""
    ids = rand_ids(model.config, 2, 11, seed=50)
    base = model(ids).logits
    pos = torch.arange(11)[None].repeat(2, 1) + torch.tensor([[5], [1000]])
    assert_close("shifted positions", model(ids, position_ids=pos).logits, base, rel=1e-5)
