"""StaticDecoder (fixed buffers, graph-capturable step) against the model's own forward and generate."""

from __future__ import annotations

import pytest
import torch

from rodimus.models.static_decode import StaticDecoder
from tests.helpers import assert_close
from tests.models import harness

MODELS = [
    pytest.param(dict(block_type="rodimus"), id="rodimus"),
    pytest.param(dict(block_type="rodimus_plus"), id="rodimus_plus-W12"),  # 6 keys back: decoding passes it
    pytest.param(dict(block_type="rodimus_plus", attn_cfg=dict(num_heads=4, num_heads_v=2, window_size=5)),
                 id="rodimus_plus-Hv2-W5"),
    pytest.param(dict(block_type="rodimus", tie_word_embeddings=True, residual_in_fp32=False), id="rodimus-bf16res"),
]


def _decode_logits(dec: StaticDecoder, ids: torch.Tensor, P: int, mask=None) -> torch.Tensor:
    """Prefill ids[:, :P], then feed ids[:, P:] one by one: logits for positions P-1 .. T-1."""
    out = [dec.prefill(ids[:, :P], None if mask is None else mask[:, :P])]
    for t in range(P, ids.shape[1]):
        out.append(dec.step(ids[:, t : t + 1]).clone())
    return torch.stack(out, 1)


@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("cfg", MODELS)
@torch.no_grad()
def test_static_steps_equal_full_forward(cfg, B):
    model = harness.build(harness.tiny_config(**cfg))
    ids = harness.rand_ids(model.config, B, 30)
    full = model(ids, use_cache=False).logits
    dec = StaticDecoder(model, B, use_cuda_graph=False)
    assert_close("static decode logits", _decode_logits(dec, ids, 5), full[:, 4:], rel=1e-5, atol=1e-4)
    # a second prefill resets every buffer (ring slots included)
    assert_close("after re-prefill", _decode_logits(dec, ids, 9), full[:, 8:], rel=1e-5, atol=1e-4)


@pytest.mark.parametrize("cfg", MODELS[:3])
@torch.no_grad()
def test_triton_step_equals_full_forward(cfg):
    """The step's Triton path (DDTS step, gated norm, act(a)*x kernels; the CUDA default) in float32
    against the torch full forward; on a CPU the kernels run under the interpreter."""
    pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e .[triton])")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = harness.build(harness.tiny_config(**cfg)).to(dev)
    ids = harness.rand_ids(model.config, 2, 16).to(dev)
    full = model(ids, use_cache=False).logits
    model.config.kernel_backend = "triton"  # read by StaticDecoder; the layers keep their own setting
    dec = StaticDecoder(model, 2, use_cuda_graph=False)
    assert dec._triton
    assert_close("triton static decode", _decode_logits(dec, ids, 5), full[:, 4:], rel=1e-5, atol=1e-4)


@pytest.mark.parametrize("cfg", MODELS[1:3])
@torch.no_grad()
def test_fused_qkv_equals_full_forward(cfg):
    model = harness.build(harness.tiny_config(**cfg))
    ids = harness.rand_ids(model.config, 2, 24, seed=2)
    full = model(ids, use_cache=False).logits
    dec = StaticDecoder(model, 2, use_cuda_graph=False, fuse_qkv=True)
    assert_close("fused qkv logits", _decode_logits(dec, ids, 5), full[:, 4:], rel=1e-5, atol=1e-4)
    with torch.no_grad():  # the fused copy follows the weights: refreshed by every prefill
        model.model.layers[0].attn.v_proj.weight.mul_(1.5)
    full = model(ids, use_cache=False).logits
    assert_close("after a weight change", _decode_logits(dec, ids, 5), full[:, 4:], rel=1e-5, atol=1e-4)


@pytest.mark.parametrize("cfg", MODELS[:3])
@torch.no_grad()
def test_greedy_equals_generate(cfg):
    model = harness.build(harness.tiny_config(**cfg))
    ids = harness.rand_ids(model.config, 2, 6, seed=3)
    want = model.generate(ids, max_new_tokens=16, do_sample=False)
    got = StaticDecoder(model, 2, use_cuda_graph=False).generate_greedy(ids, 16)
    assert torch.equal(got, want)


@pytest.mark.parametrize("cfg", MODELS[:2])
@torch.no_grad()
def test_left_padded_prefill(cfg):
    model = harness.build(harness.tiny_config(**cfg))
    a, b = harness.rand_ids(model.config, 1, 14, seed=4), harness.rand_ids(model.config, 1, 5, seed=5)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 9, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :9] = 0
    dec = StaticDecoder(model, 2, use_cuda_graph=False)
    got = dec.generate_greedy(batch, 12, attention_mask=mask)
    want = model.generate(batch, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(got, want)
    # the padded row's logits are those of its unpadded sequence, through the window and past it
    seq_b = got[1:, 9:]
    full_b = model(seq_b, use_cache=False).logits[0, 4:-1]
    logits = _decode_logits(dec, got, 14, mask=torch.cat([mask, torch.ones(2, 12, dtype=torch.long)], 1))
    assert_close("padded row", logits[1, :-1], full_b, rel=1e-5, atol=1e-4)


@torch.no_grad()
def test_start_position_is_relative():
    """Rodimus+ prefill at a shifted RoPE offset (how the benchmark fakes long contexts) decodes the same."""
    model = harness.build(harness.tiny_config("rodimus_plus"))
    ids = harness.rand_ids(model.config, 2, 20, seed=8)
    dec = StaticDecoder(model, 2, use_cuda_graph=False)
    base = _decode_logits(dec, ids, 8)
    dec.prefill(ids[:, :8], start_position=4096)
    shifted = [dec.step(ids[:, t : t + 1]).clone() for t in range(8, 20)]
    assert_close("shifted positions", torch.stack(shifted, 1), base[:, 1:], rel=1e-4)
    assert int(dec.pos[0]) == 4096 + 20


@torch.no_grad()
def test_invalid_arguments_raise():
    model = harness.build(harness.tiny_config("rodimus_plus"))
    V = model.config.vocab_size
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            StaticDecoder(model, bad)
    with pytest.raises(ValueError, match="use_cuda_graph"):
        StaticDecoder(model, 1, use_cuda_graph=True)
    dec = StaticDecoder(model, 2, use_cuda_graph=False)
    with pytest.raises(ValueError, match="prefill"):
        dec.step(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size=2"):
        dec.prefill(torch.zeros(3, 4, dtype=torch.long))
    dec.prefill(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size=2"):
        dec.step(torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="int64/int32"):
        dec.step(torch.zeros(2, 1))
    for bad in (V, -1):
        with pytest.raises(ValueError, match="vocab_size"):
            dec.step(torch.full((2, 1), bad, dtype=torch.long))
    with pytest.raises(ValueError, match="max_new_tokens"):
        dec.generate_greedy(torch.zeros(2, 3, dtype=torch.long), -1)
    # a wrapped projection whose weight the step would read directly (an unmerged adapter) is refused
    attn = model.model.layers[0].attn
    handle = attn.q_proj.register_forward_hook(lambda *a: None)
    StaticDecoder(model, 1, use_cuda_graph=False)  # unfused q/k/v are called as modules
    with pytest.raises(ValueError, match="layers.0.attn.q_proj.*fuse_qkv=False"):
        StaticDecoder(model, 1, use_cuda_graph=False, fuse_qkv=True)
    handle.remove()
    gate = model.model.layers[1].mixer.inner_mixer.mem_gate_proj
    handle = gate.register_forward_hook(lambda *a: None)
    with pytest.raises(ValueError, match="layers.1.mixer.inner_mixer.mem_gate_proj.*merge"):
        StaticDecoder(model, 1, use_cuda_graph=False)
    handle.remove()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cfg,fuse", [
    pytest.param(p.values[0], fuse, id=p.id + ("-fused-qkv" if fuse else ""))
    for p, fuse in ((MODELS[0], False), (MODELS[1], False), (MODELS[2], False), (MODELS[1], True), (MODELS[2], True))
])
@pytest.mark.parametrize("B", [1, 3])
@torch.no_grad()
def test_cuda_graph_replay_equals_eager_and_forward(B, cfg, fuse, dtype):
    model = harness.build(harness.tiny_config(**cfg)).to("cuda", dtype)
    ids = harness.rand_ids(model.config, B, 40).cuda()
    full = model(ids, use_cache=False).logits
    eager = _decode_logits(StaticDecoder(model, B, use_cuda_graph=False, fuse_qkv=fuse), ids, 6)
    graphed_dec = StaticDecoder(model, B, use_cuda_graph=True, fuse_qkv=fuse)
    graphed = _decode_logits(graphed_dec, ids, 6)
    assert graphed_dec._graph is not None  # the later steps really were replays
    rel = 1e-5 if dtype == torch.float32 else 2e-2
    assert_close("graph vs eager static", graphed, eager, rel=1e-6 if dtype == torch.float32 else 1e-3)
    assert_close("graph vs full forward", graphed, full[:, 5:], rel=rel)
    again = _decode_logits(graphed_dec, ids, 10)  # new prefill into the same buffers, same graph
    assert_close("graph after re-prefill", again, full[:, 9:], rel=rel)
