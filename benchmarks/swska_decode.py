"""The SW-SKA decode step (one query token against a cache) per ``swska.DECODE`` setting, as the GPU's time.

For each shape (batch x cached keys, H16 D128 bf16, window >= keys) this prints the time per call of every
``DECODE`` variant (JSON, merged into ``rodimus.ops.triton.swska.DECODE``), of the training kernel with its
16-row query tile (what T = 1 ran before the decode kernels), of SDPA with the key repeated per head as a
stride-0 view, with and without a key mask, and the floor (keys and values read once at the copy bandwidth
measured in the same run). Times are per call with 20 calls captured in one CUDA graph: an eager call of one
or two small kernels is bounded by the host. Each variant's output is checked against the float64 reference.

    python benchmarks/swska_decode.py
    python benchmarks/swska_decode.py '[{}, {"dot": false}, {"programs": 1024}]' --batches 1,16 --contexts 1024
    python benchmarks/swska_decode.py --smoke    # CPU check of the script (Triton interpreter, toy sizes)
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_kernels import copy_bandwidth, graph_per_call, rel_err

from rodimus.ops.swska import swska_blocked
from rodimus.ops.triton import swska as tri

H, D = 16, 128


def run_shape(B: int, S: int, variants: list[dict], bw: float, smoke: bool) -> None:
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # a smoke run on a GPU machine has no interpreter
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, 1, H, D, device=dev, generator=g).bfloat16()
    k = torch.randn(B, S, D, device=dev, generator=g).bfloat16()
    v = torch.randn(B, S, H, D, device=dev, generator=g).bfloat16()
    mask = torch.ones(B, S, dtype=torch.bool, device=dev)
    mask[0, : S // 4] = False  # a left-padded row
    ref = swska_blocked(q.double(), k.double(), v.double(), window=S)

    def timed(fn) -> float:
        if smoke:
            fn()
            return float("nan")
        return graph_per_call(fn) * 1e3  # us

    kr = k[:, :, None, :].expand(B, S, H, D)
    qt, kt, vt = q.transpose(1, 2), kr.transpose(1, 2), v.transpose(1, 2)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    base = dict(tri.DECODE)
    cells = []
    with torch.no_grad():
        for var in variants:
            tri.DECODE.update(base, **var)
            err = rel_err(tri.swska_triton(q, k, v, window=S), ref)
            t = timed(lambda: tri.swska_triton(q, k, v, window=S))
            t_m = timed(lambda: tri.swska_triton(q, k, v, window=S, key_mask=mask))
            cells.append(f"{json.dumps(var)} {t:.1f} (mask {t_m:.1f}, err {err:.1e})")
        tri.DECODE.update(base)
        t_tr = timed(lambda: tri._SWSKAFunction.apply(q, k, v, None, None, S, D**-0.5, None))
        t_sd = timed(lambda: sdpa(qt, kt, vt))
        t_sdm = timed(lambda: sdpa(qt, kt, vt, attn_mask=mask[:, None, None, :]))
    floor = B * S * (H + 1) * D * 2 / bw * 1e6
    print(
        f"B{B} S{S} us per call: " + "; ".join(cells) + f" | training kernel {t_tr:.1f} | SDPA {t_sd:.1f} "
        f"(mask {t_sdm:.1f}) | floor {floor:.1f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("variants", nargs="?", default="[{}]", help="JSON list of DECODE overrides")
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--contexts", default="512,1024,4096,16384", help="cached keys per sequence")
    p.add_argument("--smoke", action="store_true", help="toy sizes, one call each, no timing (CPU check)")
    args = p.parse_args(argv)
    bw = copy_bandwidth("swska_decode", args.smoke)
    variants = json.loads(args.variants)
    if args.smoke:
        shapes = [(2, 300)]
    else:
        shapes = [(int(b), int(s)) for b in args.batches.split(",") for s in args.contexts.split(",")]
    for B, S in shapes:
        run_shape(B, S, variants, bw, args.smoke)


if __name__ == "__main__":
    main()
