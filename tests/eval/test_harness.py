from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional 'eval' extra")

from rodimus.eval.harness import HarnessConfig, run_harness  # noqa: E402


def test_harness_runs_the_bundled_offline_tasks(tmp_path, tiny_rodimus_dir):
    cfg = HarnessConfig(
        model=str(tiny_rodimus_dir),
        tasks=["rodimus_toy"],
        limit=4,
        batch_size=4,
        bootstrap_iters=0,
        device="cpu",
        out=str(tmp_path),
    )
    payload, paths = run_harness(cfg)
    res = payload["results"]
    assert set(res) >= {"rodimus_toy_mc", "rodimus_toy_cloze"}
    assert 0.0 <= res["rodimus_toy_mc"]["acc,none"] <= 1.0
    assert 0.0 <= res["rodimus_toy_mc"]["acc_norm,none"] <= 1.0
    ppl = res["rodimus_toy_cloze"]["perplexity,none"]
    assert math.isfinite(ppl) and ppl > 1.0
    assert (
        json.loads(paths["json"].read_text())["results"]["rodimus_toy_mc"]["acc,none"]
        == res["rodimus_toy_mc"]["acc,none"]
    )
    assert "rodimus_toy_mc" in paths["markdown"].read_text()
