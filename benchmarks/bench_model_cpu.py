"""CPU throughput of Rodimus / Rodimus+ against the sequential reference and a same-size Llama.

Times, in one run: forward+backward tokens/s of our chunked DDTS path vs the sequential reference
(kernel_backend='naive') and vs transformers' LlamaForCausalLM (SDPA) at T=512 and T=2048; and greedy
decode tokens/s after a 4K-token context vs that Llama with its KV cache. Prints every figure and ratio.

    python benchmarks/bench_model_cpu.py [--d-model 256 --n-layer 4 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import LlamaForCausalLM

from rodimus import RodimusConfig, RodimusForCausalLM
from rodimus.eval.baselines import llama_baseline_config


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def rodimus(args, block_type: str, backend: str) -> RodimusForCausalLM:
    cfg = RodimusConfig(
        block_type=block_type, d_model=args.d_model, n_layer=args.n_layer, vocab_size=args.vocab,
        mixer_cfg=dict(mem_size=args.mem_size), attn_cfg=dict(num_heads=args.heads, window_size=args.window),
        kernel_backend=backend,
    )
    torch.manual_seed(0)
    return RodimusForCausalLM(cfg)


def llama_like(args, target: int) -> LlamaForCausalLM:
    """A Llama with the same width/depth whose MLP is sized to match ``target`` parameters."""
    def build(inter):
        cfg = llama_baseline_config(args.d_model, args.n_layer, args.heads, args.vocab, 8192, inter)
        torch.manual_seed(0)
        return LlamaForCausalLM(cfg)
    per_unit = 3 * args.d_model * args.n_layer
    base = n_params(build(8))
    return build(max(8, 8 + (target - base) // per_unit))


def time_train(model, B, T, reps) -> float:
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (B, T))
    model(ids, labels=ids).loss.backward()  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
    return B * T * reps / (time.perf_counter() - t)


@torch.no_grad()
def time_decode(model, context, steps) -> float:
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (1, context))
    out = model(ids, use_cache=True)
    cache = out.cache
    nxt = out.logits[:, -1:].argmax(-1)
    t = time.perf_counter()
    for _ in range(steps):
        out = model(nxt, cache=cache, use_cache=True)
        cache, nxt = out.cache, out.logits[:, -1:].argmax(-1)
    return steps / (time.perf_counter() - t)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--mem-size", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decode-context", type=int, default=4096)
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"args": vars(args), "train_tok_s": {}, "decode_tok_s": {}}
    for block in ("rodimus", "rodimus_plus"):
        ours = rodimus(args, block, "torch")
        ref = rodimus(args, block, "naive")
        llama = llama_like(args, n_params(ours))
        print(f"\n== {block}: {n_params(ours) / 1e6:.2f}M params; Llama baseline {n_params(llama) / 1e6:.2f}M")
        for B, T in ((4, 512), (1, 2048)):
            reps = 3 if T == 512 else 2
            r_ours = time_train(ours, B, T, reps)
            r_ref = time_train(ref, B, T, 1)
            r_llama = time_train(llama, B, T, reps)
            results["train_tok_s"][f"{block}/B{B}-T{T}"] = dict(chunk=r_ours, sequential=r_ref, llama_sdpa=r_llama)
            print(f"fwd+bwd B={B} T={T}: chunk {r_ours:8.0f} tok/s | sequential {r_ref:7.0f} "
                  f"({r_ours / r_ref:5.1f}x) | Llama-SDPA {r_llama:8.0f} ({r_ours / r_llama:4.2f}x)")
        d_ours = time_decode(ours, args.decode_context, args.decode_steps)
        d_llama = time_decode(llama, args.decode_context, args.decode_steps)
        results["decode_tok_s"][block] = dict(ours=d_ours, llama_kv=d_llama)
        print(f"decode after {args.decode_context} tokens, batch 1: ours {d_ours:6.1f} tok/s | "
              f"Llama+KV {d_llama:6.1f} tok/s ({d_ours / d_llama:4.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
