from __future__ import annotations

import json

import pytest

from rodimus.eval.bench import BenchConfig, run_bench


def test_bench_cache_is_constant_for_rodimus_and_linear_for_llama(
    tmp_path, tiny_rodimus_dir, tiny_rodimus_plus_dir, tiny_llama_dir
):
    cfg = BenchConfig(
        model=str(tiny_rodimus_dir),
        baselines=[str(tiny_rodimus_plus_dir), str(tiny_llama_dir)],
        contexts=[64, 128, 256],
        decode_tokens=2,
        device="cpu",
        out=str(tmp_path),
        progress=False,
    )
    payload, paths = run_bench(cfg)
    res = payload["results"]
    rod, plus, llama = (res[p.name] for p in (tiny_rodimus_dir, tiny_rodimus_plus_dir, tiny_llama_dir))
    assert all(r["status"] == "ok" for rows in res.values() for r in rows)
    assert len({r["cache_bytes"] for r in rod}) == 1  # recurrent state: same size at every context
    assert len({r["cache_bytes"] for r in plus}) == 1  # window-bounded (window 32 < 64)
    assert plus[0]["cache_bytes"] > rod[0]["cache_bytes"]
    kv = [r["cache_bytes"] for r in llama]
    assert kv[1] == pytest.approx(2 * kv[0], rel=0.02) and kv[2] == pytest.approx(4 * kv[0], rel=0.02)
    for rows in res.values():
        assert all(r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 for r in rows)
    assert json.loads(paths["json"].read_text())["results"] == res
    assert "cache_MiB" in paths["markdown"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_chunked_prefill_gives_the_same_cache(tmp_path, tiny_rodimus_dir):
    a, _ = run_bench(
        BenchConfig(
            model=str(tiny_rodimus_dir),
            contexts=[100],
            decode_tokens=1,
            device="cpu",
            out=str(tmp_path / "a"),
            progress=False,
        )
    )
    b, _ = run_bench(
        BenchConfig(
            model=str(tiny_rodimus_dir),
            contexts=[100],
            decode_tokens=1,
            prefill_chunk=33,
            device="cpu",
            out=str(tmp_path / "b"),
            progress=False,
        )
    )
    name = tiny_rodimus_dir.name
    assert a["results"][name][0]["cache_bytes"] == b["results"][name][0]["cache_bytes"]


def test_bench_config_validation():
    with pytest.raises(ValueError, match="contexts"):
        BenchConfig(model="m", contexts=[]).validate()
    with pytest.raises(ValueError, match="decode_tokens"):
        BenchConfig(model="m", decode_tokens=0).validate()
