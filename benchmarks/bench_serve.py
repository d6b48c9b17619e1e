"""Serving benchmark: Rodimus vs a Llama-style KV-cache model behind the same OpenAI-compatible server.

For each model and each concurrency (streams sending at once) it measures, over HTTP/SSE on loopback:
throughput (generated tokens/s), time to first token (TTFT) and inter-token latency (mean gap between
streamed chunks), plus the per-request state each model holds while a stream is active. Both models
have random weights and comparable size; the same engine, scheduler and server serve both.

    python benchmarks/bench_serve.py --device cpu --concurrency 1 8 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch


def word_tokenizer(folder: Path, vocab: int):
    """Tokens 't0'..'tN' split on spaces: every generated token is visible text, so each one streams."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<|endoftext|>": 0, "[UNK]": 1, **{f"t{i}": i + 2 for i in range(vocab - 2)}}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="[UNK]")
    fast.save_pretrained(folder)
    return fast


def build_models(d_model: int, n_layer: int, vocab: int, dtype: torch.dtype):
    from transformers import LlamaForCausalLM

    from rodimus import RodimusConfig, RodimusForCausalLM
    from rodimus.eval.baselines import llama_baseline_config

    torch.manual_seed(0)
    rod = RodimusForCausalLM(
        RodimusConfig(block_type="rodimus", d_model=d_model, n_layer=n_layer, vocab_size=vocab)
    )
    heads = max(1, d_model // 64)
    llama = LlamaForCausalLM(
        llama_baseline_config(d_model, n_layer, heads, vocab, 1 << 16, int(d_model * 8 / 3) // 8 * 8)
    )
    return {"rodimus": rod.to(dtype).eval(), "llama": llama.to(dtype).eval()}


async def stream_one(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> dict:
    body = {
        "model": "m",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    t0 = time.perf_counter()
    times = []
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            done = not line.startswith("data: ") or line == "data: [DONE]"
            if not done and json.loads(line[6:])["choices"][0]["text"]:
                times.append(time.perf_counter())
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return {"ttft": times[0] - t0, "gaps": gaps, "end": times[-1]}


async def run_level(url: str, concurrency: int, prompt: str, max_tokens: int, rounds: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:
        await stream_one(client, prompt, 2)  # warm-up
        t0 = time.perf_counter()
        res = []
        for _ in range(rounds):
            res += await asyncio.gather(*(stream_one(client, prompt, max_tokens) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    gaps = [g for r in res for g in r["gaps"]]
    return {
        "concurrency": concurrency,
        "requests": len(res),
        "tokens_per_s": len(res) * max_tokens / wall,
        "ttft_ms_p50": 1e3 * statistics.median(r["ttft"] for r in res),
        "ttft_ms_max": 1e3 * max(r["ttft"] for r in res),
        "inter_token_ms_mean": 1e3 * statistics.fmean(gaps) if gaps else float("nan"),
        "wall_s": wall,
    }


def state_bytes(model, prompt_ids: list[int]) -> int:
    from rodimus.serve.state import make_backend

    return make_backend(model).prefill(prompt_ids, None)[1].nbytes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1, help="bursts per concurrency level")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--memory-contexts", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument(
        "--compare-eager", action="store_true", help="also serve Rodimus with static_decode=False (eager decode)"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from rodimus.serve.app import BackgroundServer, ServerConfig, create_app
    from rodimus.serve.engine import Engine, EngineConfig

    tok = word_tokenizer(Path(tempfile.mkdtemp()), args.vocab)
    models = build_models(args.d_model, args.n_layer, args.vocab, getattr(torch, args.dtype))
    prompt = " ".join(f"t{(i * 7) % (args.vocab - 2)}" for i in range(args.prompt_tokens))
    report = {"args": vars(args), "results": {}}
    if args.compare_eager:  # the same Rodimus weights through the eager DynamicCache decode path
        models["rodimus_eager"] = models["rodimus"]
    for name, model in models.items():
        model.to(args.device)
        n_params = sum(p.numel() for p in model.parameters())
        mem = {
            ctx: state_bytes(model, [2 + i % (args.vocab - 2) for i in range(ctx)])
            for ctx in args.memory_contexts
        }
        static = False if name == "rodimus_eager" else None
        engine = Engine(
            model,
            tok,
            EngineConfig(max_batch_size=max(args.concurrency), prefix_cache_bytes=0, static_decode=static),
        ).start()
        app = create_app(engine, tok, ServerConfig(model_name="m", max_tokens_limit=1 << 16))
        levels = []
        with BackgroundServer(app) as server:
            for c in args.concurrency:
                r = run_level(server.url, c, prompt, args.max_tokens, args.rounds)
                levels.append(asyncio.run(r))
                lv = levels[-1]
                print(
                    f"{name:13s} c={c:3d}  {lv['tokens_per_s']:8.1f} tok/s  "
                    f"TTFT p50 {lv['ttft_ms_p50']:8.1f} ms  "
                    f"inter-token {lv['inter_token_ms_mean']:7.2f} ms",
                    flush=True,
                )
        engine.stop()
        report["results"][name] = {"params": n_params, "state_bytes_by_context": mem, "levels": levels}
        print(
            f"{name:13s} params {n_params / 1e6:.2f} M; state per stream: "
            + ", ".join(f"{k} tok {v / 2**20:.2f} MiB" for k, v in mem.items()),
            flush=True,
        )
    rod, lla = report["results"]["rodimus"], report["results"]["llama"]
    for a, b in zip(rod["levels"], lla["levels"], strict=True):
        print(
            f"c={a['concurrency']:3d}: throughput ratio rodimus/llama "
            f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}"
        )
    if args.compare_eager:
        for a, b in zip(rod["levels"], report["results"]["rodimus_eager"]["levels"], strict=True):
            print(
                f"c={a['concurrency']:3d}: throughput ratio rodimus static/eager decode "
                f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}"
            )
    for ctx in args.memory_contexts:
        ratio = lla["state_bytes_by_context"][ctx] / rod["state_bytes_by_context"][ctx]
        print(f"context {ctx}: llama KV / rodimus state = {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
