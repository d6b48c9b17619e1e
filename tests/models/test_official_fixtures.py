"""Against the official implementation's outputs (../shared/fixtures/official): the definition of correct."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

import rodimus  # noqa: F401  (registers the Auto classes)
from rodimus.models.conversion import convert_checkpoint
from tests.helpers import assert_close

BLOCKS = ["rodimus", "rodimus_plus"]
LOGIT_ATOL = 1e-4  # reached: ~3e-6 (see docs/MODEL.md)


def load(official_fixtures, block):
    folder = official_fixtures / block
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, load_file(folder / "fixture.safetensors")


@pytest.mark.parametrize("block", BLOCKS)
def test_full_forward_logits(official_fixtures, block):
    model, fx = load(official_fixtures, block)
    assert AutoConfig.from_pretrained(official_fixtures / block).block_type == block
    with torch.no_grad():
        logits = model(fx["input_ids"], use_cache=False).logits
    assert_close("logits", logits, fx["logits"], rel=1e-5, atol=LOGIT_ATOL)


@pytest.mark.parametrize("block", BLOCKS)
def test_cached_decode_step_logits(official_fixtures, block):
    model, fx = load(official_fixtures, block)
    ids, P = fx["input_ids"], int(fx["prefill_len"])
    with torch.no_grad():
        out = model(ids[:, :P], use_cache=True)
        steps = []
        for t in range(P, ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits[:, -1])
    assert_close("step_logits", torch.stack(steps, 1), fx["step_logits"], rel=1e-5, atol=LOGIT_ATOL)


@pytest.mark.parametrize("block", BLOCKS)
def test_greedy_generation_ids(official_fixtures, block):
    model, fx = load(official_fixtures, block)
    prompt = fx["input_ids"][0:1, : int(fx["prefill_len"])]
    out = model.generate(prompt, max_new_tokens=16, do_sample=False)
    assert torch.equal(out, fx["greedy_ids"])


@pytest.mark.parametrize("block", BLOCKS)
def test_convert_round_trip_keeps_logits(official_fixtures, block, tmp_path):
    convert_checkpoint(official_fixtures / block, tmp_path / "ours")
    convert_checkpoint(tmp_path / "ours", tmp_path / "back", to="official")
    fx = load_file(official_fixtures / block / "fixture.safetensors")
    for folder in ("ours", "back"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / folder).eval()
        with torch.no_grad():
            logits = model(fx["input_ids"], use_cache=False).logits
        assert_close(f"{folder} logits", logits, fx["logits"], rel=1e-5, atol=LOGIT_ATOL)
