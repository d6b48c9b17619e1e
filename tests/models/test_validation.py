"""Bad input: invalid configs and inputs raise ValueError naming the field and what is allowed."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rodimus import RodimusConfig, RodimusForCausalLM
from tests.models.harness import tiny_config

BAD_CONFIGS = [
    (dict(mixer_cfg=dict(mem_size=0)), r"mixer_cfg\.mem_size must be a positive int"),
    (dict(mixer_cfg=dict(mem_size=-3)), r"mixer_cfg\.mem_size"),
    (dict(block_type="rodimus_plus", attn_cfg=dict(num_heads=2, window_size=0)), r"attn_cfg\.window_size must be"),
    (dict(block_type="rodimus_plus", attn_cfg=dict(num_heads=3)), r"attn_cfg\.num_heads must be a divisor"),
    (dict(block_type="rodimus_plus", attn_cfg=dict(num_heads=2, num_heads_k=2)), r"attn_cfg\.num_heads_k"),
    (dict(block_type="rodimus_plus", attn_cfg=dict(num_heads=4, num_heads_v=3)), r"attn_cfg\.num_heads_v"),
    (dict(block_type="mamba"), r"block_type must be one of"),
    (dict(d_model=0), r"d_model must be a positive int"),
    (dict(use_scale_embedding=True), r"use_scale_embedding"),
    (dict(dropout=0.1), r"dropout"),
    (dict(kernel_backend="cuda"), r"kernel_backend must be one of"),
    (dict(mixer_cfg=dict(mem_size=8, foo=1)), r"mixer_cfg: unknown field\(s\) \['foo'\]"),
    (dict(block_type="rodimus_plus", attn_cfg=dict(num_heads=2, bar=1)), r"attn_cfg: unknown field\(s\) \['bar'\]"),
    (dict(not_a_field=1), r"unknown config field\(s\) \['not_a_field'\]"),
]


@pytest.mark.parametrize("overrides,match", BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_invalid_config(overrides, match):
    kw = dict(block_type="rodimus", d_model=64, n_layer=1, vocab_size=32, mixer_cfg=dict(mem_size=8))
    kw.update(overrides)
    with pytest.raises(ValueError, match=match):
        RodimusConfig(**kw)


def test_unknown_field_in_config_json(tmp_path):
    model = RodimusForCausalLM(tiny_config("rodimus"))
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["mystery_option"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="mystery_option"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def model():
    return RodimusForCausalLM(tiny_config("rodimus_plus")).eval()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(input_ids=torch.tensor([[1, 97]])), r"input_ids must lie in \[0, vocab_size=97\), found 97"),
        (dict(input_ids=torch.tensor([[-1, 3]])), r"found -1"),
        (dict(input_ids=torch.tensor([[1.0, 2.0]])), r"input_ids must be an int64/int32 tensor"),
        (dict(input_ids=torch.tensor([1, 2])), r"input_ids must be \[B, T\]"),
        (dict(input_ids=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 2)),
         r"attention_mask must be"),
        (dict(input_ids=torch.ones(2, 3, dtype=torch.long), cu_seqlens=torch.tensor([0, 3])), r"batch of one row"),
        (dict(inputs_embeds=torch.ones(1, 3, 5)), r"inputs_embeds must be \[B, T, d_model=64\]"),
        (dict(), r"exactly one of input_ids and inputs_embeds"),
        (dict(input_ids=torch.ones(1, 3, dtype=torch.long), labels=torch.ones(1, 2, dtype=torch.long)),
         r"labels must be"),
    ],
    ids=["id-too-large", "id-negative", "float-ids", "1d-ids", "mask-shape", "cu-batch", "embeds-width", "no-input",
         "labels-shape"],
)
def test_invalid_inputs(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model(**kwargs)


def test_strict_loading_names_bad_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    model = RodimusForCausalLM(tiny_config("rodimus"))
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["model.layers.0.mixer.bogus.weight"] = torch.zeros(2)
    del sd["model.norm_f.weight"]
    sd["model.layers.1.mixer_norm.weight"] = torch.ones(3)
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        AutoModelForCausalLM.from_pretrained(tmp_path)
    msg = str(err.value)
    assert "model.norm_f.weight" in msg and "bogus" in msg and "model.layers.1.mixer_norm.weight" in msg
