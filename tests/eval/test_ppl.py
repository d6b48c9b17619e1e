from __future__ import annotations

import json
import math

import pytest
import torch

from rodimus.eval.common import load_causal_lm, load_tokenizer
from rodimus.eval.ppl import PplConfig, evaluate_ppl, run_ppl, windows

TEXT = "Rodimus keeps a fixed-size memory while it reads.\n" * 6


@pytest.mark.parametrize(
    "n,context,stride", [(1, 8, 4), (2, 8, 4), (100, 16, 5), (100, 16, 15), (37, 64, 32)]
)
def test_windows_score_every_token_once(n, context, stride):
    scored = []
    for begin, end, n_new in windows(n, context, stride):
        assert 0 <= begin < end <= n and end - begin <= context
        assert 1 <= n_new <= end - begin - 1  # a scored token always has some history in its window
        scored.extend(range(end - n_new, end))
    assert scored == list(range(1, n))


def _doc(tmp_path, text=TEXT):
    p = tmp_path / "doc.txt"
    p.write_text(text, encoding="utf-8")
    return p


def test_full_context_ppl_equals_the_models_own_loss(tmp_path, tiny_rodimus_dir):
    cfg = PplConfig(
        model=str(tiny_rodimus_dir), data=[str(_doc(tmp_path))], context=4096, device="cpu", progress=False
    )
    res = evaluate_ppl(cfg)
    tok = load_tokenizer(tiny_rodimus_dir)
    model = load_causal_lm(tiny_rodimus_dir, device=torch.device("cpu"), dtype=torch.float32)
    ids = torch.tensor([[tok.bos_token_id, *tok(TEXT, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        ref = model(input_ids=ids, labels=ids).loss.item()
    assert res["tokens"] == ids.shape[1] - 1
    assert res["loss"] == pytest.approx(ref, rel=1e-5)
    assert res["ppl"] == pytest.approx(math.exp(ref), rel=1e-5)
    # byte-level tokenizer: one token per byte, so bits per byte is loss / ln 2
    assert res["bytes"] == len(TEXT.encode()) == res["tokens"]
    assert res["bits_per_byte"] == pytest.approx(ref / math.log(2), rel=1e-5)


def test_strided_windows_score_the_same_tokens(tmp_path, tiny_llama_dir):
    doc = _doc(tmp_path)
    full = evaluate_ppl(
        PplConfig(model=str(tiny_llama_dir), data=[str(doc)], context=4096, device="cpu", progress=False)
    )
    strided = evaluate_ppl(
        PplConfig(
            model=str(tiny_llama_dir), data=[str(doc)], context=64, stride=16, device="cpu", progress=False
        )
    )
    assert strided["tokens"] == full["tokens"] and strided["windows"] > 1
    assert math.isfinite(strided["loss"])
    # an untrained model barely uses history, so a shorter window changes the loss only a little
    assert strided["loss"] == pytest.approx(full["loss"], rel=0.02)


def test_run_ppl_reads_jsonl_and_folders_and_writes_reports(tmp_path, tiny_rodimus_dir):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("first document", encoding="utf-8")
    jl = tmp_path / "b.jsonl"
    jl.write_text(json.dumps({"text": "second"}) + "\n" + json.dumps({"text": "third one"}) + "\n")
    cfg = PplConfig(
        model=str(tiny_rodimus_dir),
        data=[str(tmp_path / "d"), str(jl)],
        context=32,
        device="cpu",
        out=str(tmp_path / "out"),
        progress=False,
    )
    res, json_path, md_path = run_ppl(cfg)
    assert res["documents"] == 3 and res["bytes"] == len("first document") + len("second") + len("third one")
    assert json.loads(json_path.read_text())["result"]["ppl"] == pytest.approx(res["ppl"])
    assert "bits_per_byte" in md_path.read_text()


def test_ppl_input_errors(tmp_path, tiny_rodimus_dir):
    with pytest.raises(ValueError, match="stride"):
        PplConfig(model="m", data=["x"], context=8, stride=8).validate()
    with pytest.raises(ValueError, match="does not exist"):
        evaluate_ppl(PplConfig(model=str(tiny_rodimus_dir), data=[str(tmp_path / "nope.txt")], device="cpu"))
