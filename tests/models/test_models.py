"""The harness's properties for each block type (the parameters are all this file adds)."""

from __future__ import annotations

import pytest

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
    for name, a, b in zip(("q", "k", "g_pre", "tau_pre"), got, ref, strict=True):
        assert a.shape == b.shape
        assert_close(name, a.float(), b, rel=2e-2)
    assert got[2].dtype == got[3].dtype == torch.float32
