"""Decode tokens/s: eager model forward with DynamicCache vs StaticDecoder eager vs StaticDecoder as a
replayed CUDA graph, for Rodimus and Rodimus+, at several batch sizes and contexts; prints ratios.

Long contexts are faked where the state makes that exact: a Rodimus state has the same size and
the same per-step cost after any number of tokens, so a short prompt is prefilled and the context
is nominal; a Rodimus+ prompt of W//2 + 64 tokens fills the key/value window, and is prefilled at
RoPE positions ending at context - 1, so every later step attends over a full window at the
positions it would have at that context. Every path is fed the same random token stream (teacher
forcing), and its last logits are compared with the eager model's.

    python benchmarks/bench_decode.py                      # d_model 2048, 24 layers, bf16, CUDA
    python benchmarks/bench_decode.py --small --device cpu # seconds-long smoke run
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_kernels import rel_err


def build(block_type: str, a) -> torch.nn.Module:
    from rodimus import RodimusConfig, RodimusForCausalLM

    attn = dict(window_size=a.window, num_heads=max(1, a.d_model // 128)) if block_type == "rodimus_plus" else None
    cfg = RodimusConfig(block_type=block_type, d_model=a.d_model, n_layer=a.n_layer, vocab_size=a.vocab,
                        attn_cfg=attn, max_position_embeddings=max(a.contexts))
    torch.manual_seed(0)
    with torch.device(a.device):
        model = RodimusForCausalLM(cfg)
    return model.to(dtype=getattr(torch, a.dtype)).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def time_eager(model, prompt, start, stream, warm, device) -> tuple[float, torch.Tensor]:
    B, P = prompt.shape
    pos = start + P
    out = model(prompt, use_cache=True, position_ids=(start + torch.arange(P, device=device)).expand(B, P))
    cache = out.cache
    for t, ids in enumerate(stream):
        if t == warm:
            sync(device)
            t0 = time.perf_counter()
        out = model(ids, cache=cache, use_cache=True, position_ids=torch.full((B, 1), pos, device=device))
        cache, pos = out.cache, pos + 1
        logits = out.logits[:, -1]
    sync(device)
    return (time.perf_counter() - t0) / (len(stream) - warm), logits


@torch.no_grad()
def time_static(dec, prompt, start, stream, warm, device) -> tuple[float, torch.Tensor]:
    dec.prefill(prompt, start_position=start)
    for t, ids in enumerate(stream):
        if t == warm:
            sync(device)
            t0 = time.perf_counter()
        logits = dec.step(ids, check=False)
    sync(device)
    return (time.perf_counter() - t0) / (len(stream) - warm), logits.clone()


@torch.no_grad()
def count_kernels(dec, prompt, ids) -> int:
    from torch.profiler import ProfilerActivity, profile

    dec.prefill(prompt)
    dec.step(ids, check=False)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        dec.step(ids, check=False)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def main(argv: list[str] | None = None) -> None:
    from rodimus.models.static_decode import StaticDecoder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="rodimus,rodimus_plus")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--contexts", default="1024,4096,16384,32768,65536")
    p.add_argument("--d-model", type=int, default=2048)
    p.add_argument("--n-layer", type=int, default=24)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--window", type=int, default=1024, help="Rodimus+ window W (a query sees W//2 back)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--eager-steps", type=int, default=12, help="timed steps of the eager paths (after 2 warm-up)")
    p.add_argument("--graph-steps", type=int, default=64, help="timed steps of the graph path (after 4 warm-up)")
    p.add_argument("--small", action="store_true", help="d_model 128, 2 layers, vocab 512, window 64: a smoke run")
    p.add_argument("--fuse-qkv", action="store_true", help="also time Rodimus+ graphs with fuse_qkv=True")
    p.add_argument("--count-kernels", action="store_true", help="profile one static step: GPU kernels launched")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    if a.small:
        a.d_model, a.n_layer, a.vocab, a.window = 128, 2, 512, 64
    a.contexts = [int(x) for x in a.contexts.split(",")]
    batches = [int(x) for x in a.batches.split(",")]
    use_graph = a.device.startswith("cuda")
    dev_name = torch.cuda.get_device_name() if use_graph else "cpu"
    print(f"# device {dev_name}, torch {torch.__version__}, {a.dtype}, d_model {a.d_model}, {a.n_layer} layers, "
          f"vocab {a.vocab}, Rodimus+ window {a.window}")
    print("# contexts are faked: Rodimus prefills a 64-token prompt (its state does not grow with context);")
    print(f"# Rodimus+ prefills W//2 + 64 = {a.window // 2 + 64} tokens at RoPE positions ending at context - 1,")
    print("# so the ring buffer holds a full window at the right positions. Same teacher-forced tokens on every path.")
    rows = []
    for bt in a.models.split(","):
        model = build(bt, a)
        P = 64 + (a.window // 2 if bt == "rodimus_plus" else 0)
        for B in batches:
            g = torch.Generator(device="cpu").manual_seed(B)
            prompt = torch.randint(0, a.vocab, (B, P), generator=g).to(a.device)
            n_eager, n_graph = 2 + a.eager_steps, 4 + a.graph_steps
            tokens = torch.randint(0, a.vocab, (max(n_eager, n_graph), B, 1), generator=g).to(a.device)
            eager_dec = StaticDecoder(model, B, use_cuda_graph=False)
            graph_dec = StaticDecoder(model, B, use_cuda_graph=True) if use_graph else None
            fused_dec = None
            if use_graph and a.fuse_qkv and bt == "rodimus_plus":
                fused_dec = StaticDecoder(model, B, use_cuda_graph=True, fuse_qkv=True)
            if a.count_kernels and use_graph:
                n_kernels = count_kernels(eager_dec, prompt, tokens[0])
                print(f"{bt:13s} B={B:3d} GPU kernels in one static step: {n_kernels}")
            for ctx in a.contexts:
                start = max(ctx - P, 0)
                t_a, l_a = time_eager(model, prompt, start, list(tokens[:n_eager]), 2, a.device)
                t_b, l_b = time_static(eager_dec, prompt, start, list(tokens[:n_eager]), 2, a.device)
                row = dict(model=bt, batch=B, context=ctx, eager_ms=t_a * 1e3, static_ms=t_b * 1e3,
                           err_static=rel_err(l_b, l_a))
                if graph_dec is not None:
                    t_c, l_c = time_static(graph_dec, prompt, start, list(tokens[:n_graph]), 4, a.device)
                    _, l_c_short = time_static(graph_dec, prompt, start, list(tokens[:n_eager]), 2, a.device)
                    row.update(graph_ms=t_c * 1e3, err_graph=rel_err(l_c_short, l_a))
                if fused_dec is not None:
                    t_d, _ = time_static(fused_dec, prompt, start, list(tokens[:n_graph]), 4, a.device)
                    _, l_d = time_static(fused_dec, prompt, start, list(tokens[:n_eager]), 2, a.device)
                    row.update(fused_ms=t_d * 1e3, err_fused=rel_err(l_d, l_a))
                rows.append(row)
                msg = (f"{bt:13s} B={B:3d} ctx={ctx:6d}  eager {B / t_a:8.1f} tok/s ({t_a * 1e3:7.2f} ms)  "
                       f"static {B / t_b:8.1f} tok/s ({t_b * 1e3:7.2f} ms)  static/eager {t_a / t_b:5.2f}x")
                if graph_dec is not None:
                    msg += (f"  graph {B / t_c:8.1f} tok/s ({t_c * 1e3:6.3f} ms)  graph/eager {t_a / t_c:6.2f}x"
                            f"  graph/static {t_b / t_c:5.2f}x  logit rel err vs eager: static "
                            f"{row['err_static']:.1e} graph {row['err_graph']:.1e}")
                else:
                    msg += f"  logit rel err {row['err_static']:.1e}"
                if fused_dec is not None:
                    msg += (f"\n{'':13s} fuse_qkv graph {B / t_d:8.1f} tok/s ({t_d * 1e3:6.3f} ms)  "
                            f"fused/eager {t_a / t_d:6.2f}x  logit rel err {row['err_fused']:.1e}")
                print(msg, flush=True)
            if graph_dec is not None:
                ms = [r["graph_ms"] for r in rows if r["model"] == bt and r["batch"] == B]
                print(f"{bt:13s} B={B:3d} graph step time max/min over contexts: {max(ms) / min(ms):.3f}")
            del eager_dec, graph_dec, fused_dec
        del model
        if use_graph:
            torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(args={k: v for k, v in vars(a).items()}, device=dev_name, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
