"""The official initialisation scheme."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rodimus import RodimusConfig, RodimusForCausalLM


@pytest.mark.parametrize("block_type,k", [("rodimus", 1), ("rodimus_plus", 3)])
def test_initialisation(block_type, k):
    torch.manual_seed(0)
    cfg = RodimusConfig(block_type=block_type, d_model=256, n_layer=4, vocab_size=1000,
                        mixer_cfg=dict(mem_size=64), attn_cfg=dict(num_heads=4, window_size=8))
    model = RodimusForCausalLM(cfg)
    layer = model.model.layers[0]
    inner = layer.mixer.inner_mixer
    n = 64
    assert abs(model.model.embeddings.weight.std().item() - 0.02) < 2e-3
    assert abs(layer.mixer.fc.weight.std().item() - 0.02) < 2e-3
    assert abs(layer.mixer.out_proj.weight.std().item() - 0.02 / math.sqrt(k * 4)) < 1e-3
    # Xavier-uniform with gain 2^-2.5: bound = gain * sqrt(6 / (fan_in + fan_out))
    w = inner.in_proj.weight
    bound = 2**-2.5 * math.sqrt(6 / sum(w.shape))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    g0 = F.softplus(inner.mem_gate_proj.bias[:n])
    tau0 = torch.sigmoid(inner.mem_gate_proj.bias[n:])
    assert g0.min() >= 1e-3 * 0.999 and g0.max() <= 1e-1 * 1.001
    assert tau0.min() >= 1 / 16 - 1e-6 and tau0.max() <= 0.9 + 1e-6
    assert torch.equal(inner.residual_weight, torch.ones_like(inner.residual_weight))
    assert (inner.ch_gate_proj[1].bias == 0).all()
    if block_type == "rodimus_plus":
        assert abs(layer.ffn.out_proj.weight.std().item() - 0.02 / math.sqrt(12)) < 1e-3
