"""Training throughput and MFU: ~350M Rodimus, Rodimus+ and a same-size Llama, one trainer loop.

All three run through `rodimus.train.trainer.Trainer.train_step` (AdamW, grad clipping, bf16 autocast)
on the same synthetic packed token stream (random tokens, documents ~2k tokens long). Rodimus models get
`cu_seqlens` document packing; Llama (transformers LlamaForCausalLM, SDPA attention) gets plain [B, T]
rows, which is the cheaper setting for it.

Model FLOPs per token (the usual 6N rule plus sequence-mixing terms, forward + backward = 3x forward):
  6 * N                                   N = parameters without the input embedding (lm_head included)
  + 12 * L * d * ctx                      attention score + value matmuls; ctx = T/2 (causal) or the
                                          mean visible window (SW-SKA: min(W/2 + 1, T))
  + 12 * L * mem_size * d_inner           Rodimus DDTS state update + readout (~2 * n * d_inner each)
MFU = tokens/s * FLOPs/token / peak (default 989e12: H200 SXM dense bf16).

Run (one H200):  python benchmarks/bench_train.py --json bench_train.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rodimus.train.config import preset_config
from rodimus.train.distributed import DistInfo
from rodimus.train.trainer import Trainer, count_parameters


def synthetic_dataset(folder: Path, vocab: int, tokens: int, seed: int = 0) -> None:
    """A prepared-folder lookalike (train.bin/val.bin/meta.json) of random tokens, EOS = 0."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", tokens), ("val", max(tokens // 50, 1 << 16))):
        x = rng.integers(1, vocab, size=n, dtype=np.uint16 if vocab < 65535 else np.uint32)
        x[rng.random(n) < 1 / 2048] = 0
        x.tofile(folder / f"{split}.bin")
    meta = {
        "format": 1,
        "dtype": np.dtype(np.uint16 if vocab < 65535 else np.uint32).name,
        "eos_id": 0,
        "eos_token": "<|endoftext|>",
        "vocab_size": vocab,
        "train_tokens": tokens,
        "val_tokens": tokens // 50,
    }
    (folder / "meta.json").write_text(json.dumps(meta))


def llama_350m(vocab: int, seq_len: int, smoke: bool = False):
    from transformers import LlamaForCausalLM

    from rodimus.eval.baselines import llama_baseline_config

    d, ffn, layers, heads = (64, 176, 2, 2) if smoke else (1024, 2816, 22, 16)
    cfg = llama_baseline_config(d, layers, heads, vocab, seq_len, intermediate_size=ffn)
    return LlamaForCausalLM(cfg)


def flops_per_token(model, kind: str, seq_len: int) -> float:
    total, non_emb = count_parameters(model)
    n = non_emb + model.get_output_embeddings().weight.numel()
    c = model.config
    if kind == "llama":
        return 6 * n + 12 * c.num_hidden_layers * c.hidden_size * seq_len / 2
    m = c.mixer_settings
    f = 6 * n + 12 * c.n_layer * m["mem_size"] * m["d_inner"]
    if kind == "rodimus_plus":
        a = c.attn_settings
        ctx = min(a["window_size"] // 2 + 1, seq_len)
        f += 12 * c.n_layer * c.d_model * ctx
    return f


def profile_steps(trainer, kind: str, steps: int, top: int = 25) -> None:
    """Print where the GPU time of `steps` training steps goes, by kernel (the fusion work's map)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            trainer.train_step(trainer.loader.next_step())
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(f"--- profile: {kind}, {steps} steps, top {top} by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=70))


def build_trainer(kind: str, args, data_dir: Path) -> Trainer:
    """The benchmark's trainer for one model kind, from the parsed options (also used by step_phases.py)."""
    preset = {"rodimus": "rodimus-350m", "rodimus_plus": "rodimus-plus-350m", "llama": "rodimus-350m"}[kind]
    cfg = preset_config(preset)
    cfg.out = str(data_dir / f"run-{kind}")
    cfg.seq_len, cfg.micro_batch, cfg.grad_accum = args.seq_len, args.micro_batch, 1
    cfg.max_steps, cfg.eval_windows, cfg.compile = 10**6, args.micro_batch, args.compile
    cfg.activation_checkpointing = args.activation_checkpointing
    cfg.cuda_graphs = args.cuda_graphs and torch.cuda.is_available()
    if args.chunk_size is not None and kind != "llama":
        cfg.model["chunk_size"] = args.chunk_size
    if args.smoke:  # CPU check of the script itself: same code, toy sizes
        cfg.model.update(d_model=64, n_layer=2, mixer_cfg=dict(mem_size=16))
        if "attn_cfg" in cfg.model:
            cfg.model["attn_cfg"] = dict(num_heads=2, window_size=64)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = llama_350m(args.vocab, args.seq_len, args.smoke) if kind == "llama" else None
    return Trainer(cfg, DistInfo(device=device), model=model, data_dir=data_dir, progress=False)


def run_one(kind: str, args, data_dir: Path) -> dict:
    trainer = build_trainer(kind, args, data_dir)
    device = trainer.info.device
    total, _ = count_parameters(trainer.base)
    fpt = flops_per_token(trainer.base, kind, args.seq_len)
    tokens_per_step = args.micro_batch * args.seq_len
    for _ in range(args.warmup):
        trainer.train_step(trainer.loader.next_step())
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = [trainer.train_step(trainer.loader.next_step())[0] for _ in range(args.steps)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if args.profile:
        profile_steps(trainer, kind, args.profile)
    tps = tokens_per_step * args.steps / dt
    row = {
        "model": kind,
        "params_M": round(total / 1e6, 1),
        "tokens_per_s": round(tps),
        "step_s": round(dt / args.steps, 4),
        "flops_per_token_G": round(fpt / 1e9, 3),
        "mfu": round(tps * fpt / args.peak_tflops / 1e12, 4),
        "final_loss": round(losses[-1], 4),
        "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        # a captured graph's activations live in its private pool, which allocated-bytes peaks miss
        "peak_reserved_GiB": round(torch.cuda.max_memory_reserved() / 2**30, 2) if device.type == "cuda" else None,
        "cuda_graphs": trainer.cfg.cuda_graphs,
    }
    del trainer
    gc.collect()  # the trainer and its captured graphs reference each other: free them (and their pool) now
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="rodimus,rodimus_plus,llama", help="comma list of rodimus, rodimus_plus, llama")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (kernel autotuning, allocator)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator dense bf16 peak, TFLOP/s")
    p.add_argument("--compile", action="store_true", help="torch.compile each model")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--cuda-graphs", action="store_true", help="replay forward+backward as CUDA graphs (trainer option)")
    p.add_argument("--profile", type=int, default=0, help="after timing, profile this many steps by kernel")
    p.add_argument(
        "--chunk-size", type=int, default=None, help="the DDTS chunk (config.chunk_size; default: the kernels' own)"
    )
    p.add_argument("--smoke", action="store_true", help="toy sizes, to check the script on a CPU")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument(
        "--ddts-launch",
        default=None,
        help="JSON file of DDTS kernel launch settings to apply first ({entry: {key: value}}, merged into "
        "rodimus.ops.triton.ddts.LAUNCH): time a sweep's choice end to end",
    )
    args = p.parse_args(argv)
    if args.ddts_launch:
        from rodimus.ops.triton import ddts

        for entry, cfg in json.loads(Path(args.ddts_launch).read_text()).items():
            if entry not in ddts.LAUNCH:
                raise ValueError(f"--ddts-launch: unknown entry {entry!r}; allowed {sorted(ddts.LAUNCH)}")
            ddts.LAUNCH[entry].update(cfg)
        print("DDTS launch settings:", json.dumps(ddts.LAUNCH))
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ("rodimus", "rodimus_plus", "llama")]
    if bad:
        raise ValueError(f"--models: unknown {bad}; allowed rodimus, rodimus_plus, llama")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        synthetic_dataset(
            data_dir,
            args.vocab,
            tokens=max(2 * 10**7, 4 * args.micro_batch * args.seq_len * (args.steps + args.warmup)),
        )
        for kind in kinds:
            rows.append(run_one(kind, args, data_dir))
            print(json.dumps(rows[-1]), flush=True)
    base = next((r for r in rows if r["model"] == "llama"), None)
    print(
        f"\nseq_len {args.seq_len}, micro_batch {args.micro_batch}, vocab {args.vocab}, "
        f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}"
    )
    print(f"{'model':14s} {'params':>8s} {'tok/s':>10s} {'MFU':>7s} {'vs llama':>9s}")
    for r in rows:
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        print(f"{r['model']:14s} {r['params_M']:7.1f}M {r['tokens_per_s']:10,d} {r['mfu']:7.1%} {ratio:>9s}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
