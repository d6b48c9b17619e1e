"""The harness's properties for each block type (the parameters are all this file adds)."""

from __future__ import annotations

import pytest
import torch

from tests.models import harness

MODELS = [
    pytest.param(dict(block_type="rodimus"), id="rodimus"),
    pytest.param(dict(block_type="rodimus_plus"), id="rodimus_plus"),
    pytest.param(dict(block_type="rodimus_plus", attn_cfg=dict(num_heads=4, num_heads_v=2, window_size=5)),
                 id="rodimus_plus-Hv2-W5"),
    pytest.param(dict(block_type="rodimus", tie_word_embeddings=True, residual_in_fp32=False), id="rodimus-tied"),
]
CHECKS = [
    "check_prefill_then_decode_equals_full",
    "check_left_padding_equals_unpadded",
    "check_batched_generate_with_left_padding",
    "check_greedy_generate_equals_argmax_loop",
    "check_sampling_generate_is_seeded",
    "check_packed_equals_separate",
    "check_packed_loss_ignores_boundaries",
    "check_rope_positions_are_relative",
]


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("cfg", MODELS)
def test_model_property(cfg, check):
    model = harness.build(harness.tiny_config(**cfg))
    getattr(harness, check)(model)


@pytest.mark.parametrize("cfg", MODELS[:2])
def test_backward_matches_naive_backend(cfg):
    harness.check_backward_matches_naive_backend(harness.tiny_config(**cfg))


def test_rodimus_cache_bytes_do_not_grow_with_context():
    model = harness.build(harness.tiny_config("rodimus"))
    assert harness.cache_bytes_after(model, 256) == harness.cache_bytes_after(model, 8192)


def test_rodimus_plus_cache_bytes_bounded_by_window():
    model = harness.build(harness.tiny_config("rodimus_plus"))  # window 12: 6 cached keys
    short = harness.cache_bytes_after(model, 3)
    at_256, at_8192 = harness.cache_bytes_after(model, 256), harness.cache_bytes_after(model, 8192)
    assert short < at_256 == at_8192


def test_autocast_merged_projection_matches_float32():
    """Under bf16 autocast one GEMM serves q, k and the gates; the result stays within bf16 error of float32."""
    import torch

    from tests.helpers import assert_close

    model = harness.build(harness.tiny_config("rodimus"))
    inner = model.model.layers[0].mixer.inner_mixer
    xc = torch.randn(2, 9, inner.d_inner, generator=torch.Generator().manual_seed(0))
    ref = inner._projections(xc)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = inner._projections(xc)
    for name, a, b in zip(("q", "k", "g_pre", "tau_pre"), got[:4], ref[:4], strict=True):
        assert a.shape == b.shape
        assert_close(name, a.float(), b, rel=2e-2)
    assert got[2].dtype == got[3].dtype == torch.float32
    assert torch.equal(got[4], xc) and torch.equal(ref[4], xc)  # x' passed on to the skip term


@pytest.mark.parametrize("packed,tied", [(False, False), (True, False), (False, True)])
def test_skip_logits_loss_equals_logits_loss(packed, tied):
    """skip_logits=True: the same loss and gradients as the logits path, with every loss keyword."""
    import torch

    from tests.helpers import assert_close

    model = harness.build(harness.tiny_config("rodimus", tie_word_embeddings=tied)).train()
    assert (model.lm_head.weight is model.model.embeddings.weight) == tied
    ids = harness.rand_ids(model.config, 1 if packed else 2, 23)
    kw = dict(cu_seqlens=torch.tensor([0, 7, 8, 23])) if packed else {}
    labels = ids.clone()
    labels[0, 3] = -100
    shift = torch.randint(-1, model.config.vocab_size, ids.shape, generator=torch.Generator().manual_seed(5))
    shift[shift < 0] = -100
    for extra in ({}, {"num_items_in_batch": 9}, {"shift_labels": shift}):
        outs = []
        for skip in (False, True):
            model.zero_grad(set_to_none=True)
            out = model(ids, labels=labels, skip_logits=skip, **kw, **extra)
            out.loss.backward()
            outs.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
        (ref, g_ref), (got, g_got) = outs
        assert got.logits is None
        torch.testing.assert_close(got.loss, ref.loss, rtol=1e-5, atol=0)
        for name in g_ref:
            assert_close(name, g_got[name], g_ref[name], rel=1e-5)
    with pytest.raises(ValueError, match="skip_logits"):
        model(ids, skip_logits=True)


def test_fused_qkv_projection_under_autocast_matches_separate():
    """Under autocast the SW-SKA layer projects q, k, v with one GEMM; it equals the three separate ones."""
    from rodimus.layers.attention import SlidingWindowSharedKeyAttention

    torch.manual_seed(0)
    attn = SlidingWindowSharedKeyAttention(32, 4, 2, window=8, layer_idx=0, kernel_backend="torch")
    h = torch.randn(2, 9, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = attn._qkv(h)
        separate = (attn.q_proj(h), attn.k_proj(h), attn.v_proj(h))
    for a, b in zip(fused, separate, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("block_type", ["rodimus", "rodimus_plus"])
def test_compiled_training_step_matches_eager(block_type):
    """torch.compile (the trainer's `compile` option) gives eager's loss and gradients; the mixer's
    saved-tensor hooks stand aside under compile (~40 s per model on 2 cores: inductor's C++ build)."""
    from tests.helpers import assert_close

    cfg = harness.tiny_config(block_type, d_model=32, mixer_cfg=dict(mem_size=16), kernel_backend="torch")
    torch.manual_seed(0)
    model = harness.build(cfg).train()
    ids = harness.rand_ids(model.config, 2, 21)
    results = []
    for fn in (model, torch.compile(model)):
        model.zero_grad()
        loss = fn(ids, labels=ids).loss
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
    names = ["loss"] + [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, *results, strict=True):
        assert_close(name, a, b, rel=1e-5)
