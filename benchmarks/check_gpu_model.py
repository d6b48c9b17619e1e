"""On a CUDA machine: the whole model through the Triton kernels against the official fixtures.

Loads each fixture folder onto the GPU, runs the full forward, cached decode and greedy generation with
``kernel_backend='triton'`` and ``'torch'`` in float32, and prints the max |logit diff| against the
official reference logits (and bf16 numbers for information). Also times a cached decode step.

    python benchmarks/check_gpu_model.py --fixtures ../shared/fixtures/official
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import rodimus  # noqa: F401
from rodimus import RodimusForCausalLM


@torch.no_grad()
def run(folder: Path, backend: str, dtype: torch.dtype) -> dict:
    model = RodimusForCausalLM.from_pretrained(folder, kernel_backend=backend).to("cuda", dtype).eval()
    fx = {k: v.cuda() for k, v in load_file(folder / "fixture.safetensors").items()}
    ids, P = fx["input_ids"], int(fx["prefill_len"])
    full = model(ids, use_cache=False).logits
    out = model(ids[:, :P], use_cache=True)
    steps = []
    for t in range(P, ids.shape[1]):
        out = model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
        steps.append(out.logits[:, -1])
    greedy = model.generate(ids[0:1, :P], max_new_tokens=16, do_sample=False)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        out = model(ids[:, -1:], cache=out.cache, use_cache=True)
    torch.cuda.synchronize()
    return {
        "full": (full - fx["logits"]).abs().max().item(),
        "steps": (torch.stack(steps, 1) - fx["step_logits"]).abs().max().item(),
        "greedy_equal": bool(torch.equal(greedy, fx["greedy_ids"])),
        "step_ms": (time.perf_counter() - t0) / 20 * 1e3,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixtures", type=Path, default=Path("../shared/fixtures/official"))
    args = p.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for block in ("rodimus", "rodimus_plus"):
        for backend in ("torch", "triton"):
            for dtype in (torch.float32, torch.bfloat16):
                r = run(args.fixtures / block, backend, dtype)
                print(f"{block:13s} {backend:6s} {str(dtype):15s} full {r['full']:.2e}  steps {r['steps']:.2e}  "
                      f"greedy_equal {r['greedy_equal']}  decode step {r['step_ms']:.2f} ms (2 layers, B=2)")


if __name__ == "__main__":
    main()
