"""Chunked linear cross-entropy vs logits + F.cross_entropy: time and peak memory, forward + backward.

Each form runs in a fresh subprocess so its peak memory is its own (CUDA: max_memory_allocated; CPU: peak
resident set growth over the process and its inputs). Prints the ratios. On CUDA the chunked form runs
twice: with the fused Triton row kernel (``chunked``, the default) and with the torch row form
(``chunked-torch``, RODIMUS_KERNELS=torch), so the kernel's gain is measured in the same run.

    python benchmarks/bench_loss.py [--rows 4096] [--d-model 1024] [--vocab 32000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def run_form(form: str, rows: int, d: int, vocab: int, device: str, reps: int) -> dict:
    from rodimus.ops.cross_entropy import linear_cross_entropy, linear_cross_entropy_chunked

    g = torch.Generator().manual_seed(0)
    h = torch.randn(rows, d, generator=g).to(device).requires_grad_()
    w = (torch.randn(vocab, d, generator=g) * d**-0.5).to(device).requires_grad_()
    t = torch.randint(0, vocab, (rows,), generator=g).to(device)
    fn = linear_cross_entropy_chunked if form == "chunked" else linear_cross_entropy
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        h.grad = w.grad = None
        with amp:
            loss = fn(h, w, t)
        loss.backward()
        return loss

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux: process + inputs
    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(reps):
        loss = step()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / reps
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # growth of the peak resident set over the process + inputs
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {"form": form, "ms": round(dt * 1e3, 2), "peak_MiB": round(peak, 1), "loss": float(loss)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4096, help="tokens (B * T)")
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--form", default=None, help=argparse.SUPPRESS)  # internal: run one form and print JSON
    args = p.parse_args(argv)
    if args.form:
        print(json.dumps(run_form(args.form, args.rows, args.d_model, args.vocab, args.device, args.reps)))
        return
    rows = {}
    forms = ("logits", "chunked", "chunked-torch") if args.device == "cuda" else ("logits", "chunked")
    for form in forms:
        cmd = [sys.executable, __file__, "--form", form.split("-")[0], "--rows", str(args.rows),
               "--d-model", str(args.d_model), "--vocab", str(args.vocab), "--device", args.device,
               "--reps", str(args.reps)]
        env = {**os.environ, "RODIMUS_KERNELS": "torch"} if form == "chunked-torch" else None
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]
        rows[form] = {**json.loads(out), "form": form}
        print(json.dumps(rows[form]), flush=True)
    a, b = rows["logits"], rows["chunked"]
    print(f"rows {args.rows} d {args.d_model} vocab {args.vocab} on {args.device}: chunked/logits time "
          f"{b['ms'] / a['ms']:.2f}x, peak memory {b['peak_MiB']:.0f} vs {a['peak_MiB']:.0f} MiB "
          f"(loss equal: {abs(a['loss'] - b['loss']) <= 1e-4 * abs(a['loss'])})")
    if "chunked-torch" in rows:
        c = rows["chunked-torch"]
        print(f"fused row kernel: {c['ms']:.2f} -> {b['ms']:.2f} ms ({c['ms'] / b['ms']:.2f}x faster)")


if __name__ == "__main__":
    main()
