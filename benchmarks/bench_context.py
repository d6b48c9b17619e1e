"""Memory and speed against context: Rodimus, Rodimus+ and a Llama of the same width, random weights,
measured by `rodimus bench` in one run; prints cache and throughput ratios against Llama."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def build(folder: Path, d_model: int, n_layer: int, vocab: int, window: int, max_ctx: int) -> list[str]:
    from transformers import LlamaForCausalLM

    from rodimus import RodimusConfig, RodimusForCausalLM
    from rodimus.eval.baselines import llama_baseline_config

    torch.manual_seed(0)
    heads = max(1, d_model // 32)
    paths = []
    for bt in ("rodimus", "rodimus_plus"):
        attn = dict(num_heads=heads, window_size=window) if bt == "rodimus_plus" else None
        cfg = RodimusConfig(
            block_type=bt,
            d_model=d_model,
            n_layer=n_layer,
            vocab_size=vocab,
            attn_cfg=attn,
            max_position_embeddings=max_ctx,
        )
        RodimusForCausalLM(cfg).save_pretrained(folder / f"{bt}_d{d_model}")
        paths.append(str(folder / f"{bt}_d{d_model}"))
    cfg = llama_baseline_config(d_model, n_layer, heads, vocab, max_ctx)
    LlamaForCausalLM(cfg).save_pretrained(folder / f"llama_d{d_model}")
    return [*paths, str(folder / f"llama_d{d_model}")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768,65536")
    p.add_argument("--prefill-chunk", type=int, default=4096)
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--max-seconds", type=float, default=240.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", default="runs/bench_context")
    a = p.parse_args(argv)
    from rodimus.eval.bench import BenchConfig, run_bench

    contexts = [int(x) for x in a.contexts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rod, plus, llama = build(Path(tmp), a.d_model, a.n_layer, a.vocab, a.window, max(contexts))
        payload, paths = run_bench(
            BenchConfig(
                model=rod,
                baselines=[plus, llama],
                contexts=contexts,
                decode_tokens=a.decode_tokens,
                prefill_chunk=a.prefill_chunk,
                max_seconds=a.max_seconds,
                device=a.device,
                dtype=a.dtype,
                out=a.out,
            )
        )
    res = list(payload["results"].values())
    base = {r["context"]: r for r in res[2] if r["status"] == "ok"}
    for name, rows in zip(list(payload["results"])[:2], res[:2], strict=True):
        for r in rows:
            b = base.get(r["context"])
            if r["status"] == "ok" and b:
                print(
                    f"{name:24s} ctx={r['context']:6d} cache llama/ours={b['cache_bytes'] / r['cache_bytes']:8.1f} "
                    f"prefill ours/llama={r['prefill_tokens_per_s'] / b['prefill_tokens_per_s']:5.2f} "
                    f"decode ours/llama={r['decode_tokens_per_s'] / b['decode_tokens_per_s']:5.2f}"
                )
    print(*(f"{k}: {v}" for k, v in paths.items()), sep="\n")


if __name__ == "__main__":
    main()
