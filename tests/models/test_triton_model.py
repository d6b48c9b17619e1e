"""Whole models through every Triton kernel (interpreter on CPU) == the torch forms, forward and backward."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from tests.models.harness import build, rand_ids, tiny_config

pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e .[triton])")

import rodimus.ops.triton  # noqa: E402, F401  (registers the kernels)

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _set_backend(model, backend):
    model.config.kernel_backend = backend
    for m in model.modules():
        if hasattr(m, "kernel_backend"):
            m.kernel_backend = backend


def _run(model, ids, cu, backend):
    _set_backend(model, backend)
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids, cu_seqlens=cu)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


@pytest.mark.parametrize("block_type", ["rodimus", "rodimus_plus"])
@pytest.mark.parametrize("packed", [False, True], ids=["batch", "packed"])
def test_triton_model_matches_torch(block_type, packed, monkeypatch):
    monkeypatch.delenv("RODIMUS_KERNELS", raising=False)
    model = build(tiny_config(block_type, d_model=32, mixer_cfg=dict(mem_size=16))).train().to(DEV)
    if packed:
        ids, cu = rand_ids(model.config, 1, 37).to(DEV), torch.tensor([0, 9, 10, 30, 37], device=DEV)
    else:
        ids, cu = rand_ids(model.config, 2, 21).to(DEV), None
    ref_logits, ref_grads = _run(model, ids, cu, "torch")
    logits, grads = _run(model, ids, cu, "triton")
    assert_close("logits", logits, ref_logits, rel=1e-4)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert_close(f"grad {name}", g, ref_grads[name], rel=1e-4)


@pytest.mark.parametrize("block_type", ["rodimus", "rodimus_plus"])
@torch.no_grad()
def test_cached_decode_through_the_kernels(block_type, monkeypatch):
    """Prefill, then one token at a time past the Rodimus+ window, a left-padded row masked, through the
    Triton kernels (the decode kernels for the recurrence and the attention) == the torch forms' full
    forward at every real position."""
    monkeypatch.delenv("RODIMUS_KERNELS", raising=False)
    model = build(tiny_config(block_type)).to(DEV)
    T, P, pad = 30, 7, 5
    ids = rand_ids(model.config, 2, T).to(DEV)
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    _set_backend(model, "torch")
    full = model(ids, attention_mask=mask).logits
    _set_backend(model, "triton")
    out = model(ids[:, :P], attention_mask=mask[:, :P], use_cache=True)
    steps = [out.logits]
    for t in range(P, T):
        out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=out.cache, use_cache=True)
        steps.append(out.logits)
    logits = torch.cat(steps, 1)
    assert_close("row 0", logits[0], full[0], rel=1e-4)
    assert_close("row 1", logits[1, pad:], full[1, pad:], rel=1e-4)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("block_type", ["rodimus", "rodimus_plus"])
def test_empty_trailing_documents_change_nothing(block_type, backend, monkeypatch):
    """pad_cu_seqlens' empty documents (what a captured CUDA graph replays with) are skipped by every op."""
    from rodimus.ops.packing import pad_cu_seqlens

    monkeypatch.delenv("RODIMUS_KERNELS", raising=False)
    model = build(tiny_config(block_type, d_model=32, mixer_cfg=dict(mem_size=16))).train().to(DEV)
    ids, cu = rand_ids(model.config, 1, 37).to(DEV), torch.tensor([0, 9, 10, 30, 37], device=DEV)
    padded = pad_cu_seqlens(cu, 9)  # five empty documents at the end
    ref_logits, ref_grads = _run(model, ids, cu, backend)
    logits, grads = _run(model, ids, padded, backend)
    assert_close("logits", logits, ref_logits, rel=1e-5)
    for name, g in grads.items():
        assert_close(f"grad {name}", g, ref_grads[name], rel=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_model_runs_the_kernels_at_their_chunk(chunk_size, monkeypatch, caplog):
    """Config chunk_size None: the kernels' own tuned chunk (the torch form's default of 32 cost the H200
    training step ~15%); an explicit chunk_size is honoured, with a warning that names the faster one."""
    from rodimus.layers import mixer
    from rodimus.ops.triton import ddts as tri

    mixer.logger.warning_once.cache_clear()

    seen = []
    apply = tri._DDTSFunction.apply
    monkeypatch.setattr(tri._DDTSFunction, "apply", lambda *a: seen.append(a[9]) or apply(*a))  # C
    cfg = tiny_config("rodimus", d_model=32, mixer_cfg=dict(mem_size=16), kernel_backend="triton")
    cfg.chunk_size = chunk_size
    model = build(cfg).train().to(DEV)
    ids = rand_ids(model.config, 1, 21).to(DEV)
    model(ids, labels=ids).loss.backward()
    assert seen and set(seen) == {tri.DEFAULT_CHUNK if chunk_size is None else chunk_size}
    warned = [r.getMessage() for r in caplog.records if "chunk_size=" in r.getMessage()]
    assert bool(warned) == (chunk_size is not None), warned
