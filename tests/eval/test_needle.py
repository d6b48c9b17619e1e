from __future__ import annotations

import json

import pytest

from rodimus.eval.common import load_tokenizer
from rodimus.eval.needle import FILLER, NEEDLE, NeedleConfig, build_prompt, run_needle


@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("length", [200, 333])
def test_prompt_has_exact_length_and_needle_depth(tiny_rodimus_dir, length, depth):
    tok = load_tokenizer(tiny_rodimus_dir)
    filler = tok(FILLER, add_special_tokens=False)["input_ids"]
    ids = build_prompt(tok, length, depth, "48151", filler)
    assert len(ids) == length
    text = tok.decode(ids)
    needle = NEEDLE.format(key="48151")
    assert text.count("48151") == 2 and needle in text
    hay_start = text.index("remember it. ") + len("remember it. ")
    hay_len = len(text) - len(needle) - len("What is the pass key? The pass key is") - hay_start
    where = (text.index(needle) - hay_start) / hay_len  # byte tokenizer: characters are tokens
    assert where == pytest.approx(depth, abs=0.02)


def test_too_short_length_is_rejected(tiny_rodimus_dir):
    tok = load_tokenizer(tiny_rodimus_dir)
    with pytest.raises(ValueError, match="shorter than the prompt"):
        build_prompt(tok, 40, 0.5, "12345", [1, 2, 3])


def test_run_needle_writes_grid_table_and_heatmap(tmp_path, tiny_rodimus_plus_dir):
    cfg = NeedleConfig(
        model=str(tiny_rodimus_plus_dir),
        lengths=[200, 300],
        depths=[0.0, 1.0],
        trials=2,
        device="cpu",
        out=str(tmp_path),
        progress=False,
    )
    res, paths = run_needle(cfg)
    data = json.loads(paths["json"].read_text())
    assert len(data["accuracy"]) == 2 and len(data["accuracy"][0]) == 2
    assert all(0.0 <= a <= 1.0 for row in data["accuracy"] for a in row)
    assert all(len(r["trials"]) == 2 for r in data["rows"])
    assert "| 100% |" in paths["markdown"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_needle_config_validation():
    with pytest.raises(ValueError, match="depths"):
        NeedleConfig(model="m", depths=[1.5]).validate()
    with pytest.raises(ValueError, match="lengths"):
        NeedleConfig(model="m", lengths=[4]).validate()
