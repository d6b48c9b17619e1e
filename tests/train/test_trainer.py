"""In-process training runs: outputs, HF folder, optimizer groups, schedule, config handling."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rodimus.train.config import build_config, preset_config
from rodimus.train.optim import clip_grad_norm, lr_multiplier, param_groups
from rodimus.train.trainer import Trainer

from .conftest import read_metrics, tiny_fields


@pytest.mark.parametrize("block_type", ["rodimus", "rodimus_plus"])
def test_train_writes_everything_and_final_folder_loads(dataset_dir, tmp_path, block_type):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import rodimus  # noqa: F401

    model = dict(block_type=block_type, d_model=32, n_layer=2, mixer_cfg=dict(mem_size=8))
    if block_type == "rodimus_plus":
        model["attn_cfg"] = dict(num_heads=2, window_size=16)
    fields = tiny_fields(
        dataset_dir,
        model=model,
        max_steps=16,
        eval_every=8,
        ckpt_every=8,
        sample_tokens=8,
        grad_accum=2,
        activation_checkpointing=block_type == "rodimus_plus",
        micro_batch=2,
    )
    cfg = build_config(None, None, {**fields, "out": str(tmp_path / "run")})
    res = Trainer(cfg, progress=False).fit()
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert {"loss", "lr", "grad_norm", "tok_per_s"} <= set(rows[0])
    assert [r["step"] for r in rows if "val_loss" in r] == [8, 16]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5  # it learns
    assert res["val_ppl"] == pytest.approx(math.exp(res["val_loss"]))
    assert isinstance(res["sample"], str)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000

    final = tmp_path / "run" / "final"
    m = AutoModelForCausalLM.from_pretrained(str(final))
    tok = AutoTokenizer.from_pretrained(str(final))
    assert m.config.block_type == block_type and m.config.eos_token_id == tok.eos_token_id
    ids = torch.tensor([tok.encode("def value", add_special_tokens=False)])
    assert m(ids).logits.shape[-1] == m.config.vocab_size >= len(tok)


def test_no_weight_decay_on_bias_norm_residual_embedding():
    from rodimus import RodimusConfig, RodimusForCausalLM

    m = RodimusForCausalLM(
        RodimusConfig(
            block_type="rodimus_plus",
            d_model=32,
            n_layer=1,
            vocab_size=64,
            mixer_cfg=dict(mem_size=8),
            attn_cfg=dict(num_heads=2, window_size=8),
        )
    )
    decay, no_decay = param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert any("residual_weight" in n for n in nd) and any("embeddings" in n for n in nd)
    assert all(p.ndim >= 2 for p in decay["params"])
    assert not any("norm" in n or n.endswith("bias") or "embeddings" in n for n in d)
    assert "lm_head.weight" in d and len(d) + len(nd) == len(names)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-adamw", "adamw"])
@pytest.mark.parametrize("max_norm", [1.0, 1e6], ids=["clipped", "unclipped"])
def test_clip_grad_norm_equals_torch_clip_then_step(fused, max_norm):
    """Clipping folded into the fused AdamW's kernel (grad_scale) steps as clip_grad_norm_ + step does."""
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # the fused kernel the trainer runs is CUDA's
    params = [[torch.nn.Parameter(torch.randn(*s, dtype=torch.float64, device=dev)) for s in ((7, 5), (5,), (3, 4, 2))]]
    params.append([torch.nn.Parameter(p.detach().clone()) for p in params[0]])
    opts = [torch.optim.AdamW(ps, lr=0.1, weight_decay=0.1, fused=fused) for ps in params]
    for _ in range(3):
        grads = [torch.randn_like(p) * 10 for p in params[0]]
        norms = []
        for ps in params:
            for p, g in zip(ps, grads, strict=True):
                p.grad = g.clone()
        norms.append(torch.nn.utils.clip_grad_norm_(params[0], max_norm))
        opts[0].step()
        norms.append(clip_grad_norm(opts[1], params[1], max_norm))
        assert hasattr(opts[1], "grad_scale") == fused
        opts[1].step()
        torch.testing.assert_close(norms[1], norms[0], rtol=1e-12, atol=0)
        for a, b in zip(*params, strict=True):  # the fused kernel's scale is float32: its rounding, 6e-8
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-8)
            # the clipped gradients themselves (AdamW alone would hide a wrong factor: it is scale-invariant)
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=0)


def test_schedule_and_config_validation(tmp_path):
    assert lr_multiplier(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert 0.1 < lr_multiplier(55, 10, 100, 0.1) < 1.0
    with pytest.raises(ValueError, match="preset"):
        preset_config("huge")
    with pytest.raises(ValueError, match="micro_batch"):
        build_config("tiny", None, {"micro_batch": 0})
    with pytest.raises(ValueError, match="unknown field"):
        build_config("tiny", None, {"learning_rate": 1})
    f = tmp_path / "c.toml"
    f.write_text('preset = "tiny"\nmax_steps = 7\n[model]\nd_model = 64\n')
    cfg = build_config(None, str(f), {"seq_len": 64})
    assert (cfg.max_steps, cfg.model["d_model"], cfg.seq_len, cfg.model["n_layer"]) == (7, 64, 64, 3)
    assert json.loads(json.dumps(cfg.model))  # JSON-able for train_config.json


@pytest.mark.parametrize("block_type", ["rodimus", "rodimus_plus"])
def test_packed_loss_equals_documents_run_alone(block_type):
    """No leakage: the packed loss equals the sum of every segment's loss computed on its own."""
    import torch.nn.functional as F

    from rodimus import RodimusConfig, RodimusForCausalLM
    from rodimus.data.dataset import pack_batch
    from rodimus.train.trainer import lm_loss_sum

    torch.manual_seed(0)
    extra = dict(attn_cfg=dict(num_heads=2, window_size=8)) if block_type == "rodimus_plus" else {}
    cfg = RodimusConfig(
        block_type=block_type, d_model=32, n_layer=2, vocab_size=64, mixer_cfg=dict(mem_size=8), **extra
    )
    model = RodimusForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    T = 24
    windows = [torch.randint(1, 64, (T,), generator=gen).numpy() for _ in range(2)]
    windows[0][[5, 13]] = 0  # EOS: a document starts here, inside the first window
    windows[1][9] = 0
    batch = pack_batch(windows, eos_id=0)
    flat = batch["input_ids"][0]
    cu = batch["cu_seqlens"].tolist()
    assert cu == [0, 5, 13, T, T + 9, 2 * T]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], cu_seqlens=batch["cu_seqlens"], use_cache=False).logits
        packed, n_packed = lm_loss_sum(logits, batch["labels"])
        alone, n_alone = torch.zeros(()), 0
        for a, b in zip(cu[:-1], cu[1:], strict=True):
            seg = flat[a:b][None]
            seg_logits = model(input_ids=seg, use_cache=False).logits
            s, n = lm_loss_sum(seg_logits, seg)
            alone, n_alone = alone + s, n_alone + n
            if b % T != 0:  # the segment's last token predicts the EOS opening the next document
                alone = alone + F.cross_entropy(seg_logits[0, -1:], flat[b : b + 1], reduction="sum")
                n_alone += 1
    assert n_packed == n_alone == 2 * (T - 1)
    assert float(packed) == pytest.approx(float(alone), rel=1e-5)


@pytest.mark.parametrize("block_type", ["rodimus", "rodimus_plus"])
def test_fused_loss_equals_logits_loss(dataset_dir, tmp_path, block_type):
    """The trainer's chunked loss (no [B, T, vocab] logits) gives the same loss and gradients."""
    from tests.helpers import assert_close

    model = dict(block_type=block_type, d_model=32, n_layer=2, mixer_cfg=dict(mem_size=8))
    if block_type == "rodimus_plus":
        model["attn_cfg"] = dict(num_heads=2, window_size=16)
    fields = tiny_fields(dataset_dir, model=model, micro_batch=2)
    results = []
    for fused in (True, False):
        cfg = build_config(None, None, {**fields, "fused_loss": fused, "out": str(tmp_path / f"run{fused}")})
        trainer = Trainer(cfg, progress=False)
        assert trainer.fused_loss is fused
        (batch,) = trainer.loader.next_step()
        assert "cu_seqlens" in batch  # packed documents: the targets at document starts matter
        loss_sum, count = trainer._forward_loss(batch)
        (loss_sum / count).backward()
        grads = {n: p.grad.clone() for n, p in trainer.base.named_parameters() if p.grad is not None}
        results.append((loss_sum.detach(), count, grads))
    (l1, c1, g1), (l2, c2, g2) = results
    assert c1 == c2
    assert float(l1) == pytest.approx(float(l2), rel=1e-5)
    assert g1.keys() == g2.keys()
    for name in g1:
        assert_close(name, g1[name], g2[name], rel=1e-5)
