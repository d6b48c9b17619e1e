"""FSDP2 on N GPUs against one GPU at the same global batch: tokens/s per GPU, memory, loss curves.

Each preset is trained twice from the same seed on the same data (the default corpus, prepared once):
``torchrun --nproc_per_node N -m rodimus train --parallel fsdp`` with micro-batch ``global / N``, and one
process (eager, no CUDA graphs: what FSDP2 runs too) with micro-batch ``global``. Prints, per preset, the
median step throughput after the first steps, the scaling efficiency (tokens/s per GPU over the 1-GPU
rate), peak memory per GPU and the largest relative difference between the two loss curves.

    python benchmarks/bench_multi_gpu.py --gpus 2 --steps 30
    python benchmarks/bench_multi_gpu.py --gpus 2 --steps 4 --presets tiny --seq-len 64 --global-batch 4   # CPU check
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def train(name: str, nproc: int, preset: str, micro_batch: int, args) -> list[dict]:
    """Run one training job; returns its metrics rows (empty when it failed or timed out)."""
    out = Path(args.runs) / name
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                                   if nproc > 1 else [])  # fmt: skip
    cmd = [
        *launcher, "-m", "rodimus", "train", "--preset", preset, "--out", str(out), "--no-progress",
        "--seq-len", str(args.seq_len), "--micro-batch", str(micro_batch), "--max-steps", str(args.steps),
        "--eval-every", str(args.steps), "--ckpt-every", str(10**9), "--seed", "0",
        "--set", f"warmup_steps={args.warmup_steps}",
    ]  # fmt: skip
    if nproc > 1:
        cmd += ["--parallel", "fsdp"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
        print("\n".join(line for line in tail if "warn" not in line.lower()), flush=True)
    except subprocess.TimeoutExpired:
        print(f"{name}: timed out after {args.timeout} s", flush=True)
    print(f"{name}: {time.time() - t0:.0f} s wall", flush=True)
    metrics = out / "metrics.jsonl"
    return [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []


def summarize(rows: list[dict], skip: int) -> dict:
    steps = [r for r in rows if "tok_per_s" in r]
    tps = [r["tok_per_s"] for r in steps[skip:]] or [r["tok_per_s"] for r in steps]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    return {
        "steps": len(steps),
        "tok_per_s": round(statistics.median(tps)) if tps else None,
        "peak_mem_GiB": max((r["peak_mem_GiB"] for r in steps if "peak_mem_GiB" in r), default=None),
        "final_loss": steps[-1]["loss"] if steps else None,
        "val_loss": val[-1] if val else None,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=2, help="processes of the FSDP2 run")
    p.add_argument("--presets", default="rodimus-350m,rodimus-plus-1.3b", help="comma list of training presets")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--global-batch", type=int, default=8, help="windows per optimizer step, all ranks together")
    p.add_argument("--warmup-steps", type=int, default=5, help="learning-rate warmup (the presets' is 1000)")
    p.add_argument("--skip", type=int, default=3, help="first steps left out of the throughput median")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per training job")
    p.add_argument("--runs", default="runs/multi_gpu", help="run folders")
    p.add_argument("--out", default="runs/multi_gpu", help="summary (JSON and metrics copies) here")
    args = p.parse_args(argv)
    if args.gpus < 2 or args.global_batch % args.gpus:
        raise ValueError(f"--gpus must be >= 2 and divide --global-batch {args.global_batch}, got {args.gpus}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for preset in [x.strip() for x in args.presets.split(",") if x.strip()]:
        runs = {}
        for name, n, mb in ((f"{preset}-fsdp{args.gpus}", args.gpus, args.global_batch // args.gpus),
                            (f"{preset}-1proc", 1, args.global_batch)):  # fmt: skip
            rows = train(name, n, preset, mb, args)
            (out / f"{name}.metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            runs[n] = (rows, summarize(rows, args.skip))
        many, one = runs[args.gpus][1], runs[1][1]
        res = {"preset": preset, "gpus": args.gpus, "global_batch": args.global_batch, "seq_len": args.seq_len,
               f"fsdp{args.gpus}": many, "one": one}  # fmt: skip
        if many["tok_per_s"] and one["tok_per_s"]:
            res["per_gpu_tok_per_s"] = round(many["tok_per_s"] / args.gpus)
            res["scaling_efficiency"] = round(many["tok_per_s"] / args.gpus / one["tok_per_s"], 3)
        a = {r["step"]: r["loss"] for r in runs[args.gpus][0] if "loss" in r}
        b = {r["step"]: r["loss"] for r in runs[1][0] if "loss" in r}
        common = sorted(a.keys() & b.keys())
        if common:
            res["loss_max_rel_diff"] = max(abs(a[s] - b[s]) / abs(b[s]) for s in common)
            res["loss_steps_compared"] = len(common)
        results.append(res)
        print(json.dumps(res), flush=True)
        (out / "summary.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
