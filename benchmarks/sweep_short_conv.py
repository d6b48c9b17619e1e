"""Launch-shape sweep of the short-conv Triton kernels (``rodimus.ops.triton.short_conv._BLOCKS``).

Times forward + backward of the packed training shape (one row of B*T tokens, 8 documents, bf16) for
each candidate (rows, channels, warps) and row-tile merging target of the backward's first pass, in one
process (each replayed as a CUDA graph), and prints them fastest first. Run on the GPU:

    python benchmarks/sweep_short_conv.py --rows 16384 --dim 2048
"""

from __future__ import annotations

import argparse
import itertools

import torch


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=16384)
    p.add_argument("--dim", type=int, default=2048)
    args = p.parse_args(argv)
    import triton.testing

    from rodimus.ops.triton import short_conv as sc

    dev = "cuda"
    R, D = args.rows, args.dim
    x = torch.randn(1, R, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(D, 4, device=dev, requires_grad=True)
    b = torch.randn(D, device=dev, requires_grad=True)
    cu = torch.linspace(0, R, 9, device=dev).to(torch.int32)
    dy = torch.randn_like(x)

    def step():
        y, _ = sc.short_conv_triton(x, w, b, cu_seqlens=cu)
        torch.autograd.grad(y, (x, w, b), dy)

    def timed() -> float:
        """GPU time of one fwd+bwd replayed as a CUDA graph (the eager call is launch-bound)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return triton.testing.do_bench(graph.replay, warmup=5, rep=30)

    default = dict(sc._BLOCKS)
    results = []
    for bt, bd, warps, target in itertools.product((32, 64, 128), (32, 64, 128), (2, 4, 8), (4096, 16384)):
        if bt * bd > 8192 or bt * bd < 1024:
            continue
        sc._BLOCKS["dpre"] = (bt, bd, warps)
        sc._TARGET_PROGRAMS = target
        try:
            ms = timed()
        except Exception as e:  # a shape that does not compile or fit is reported and skipped
            print(f"dpre {bt}x{bd} w{warps} target {target}: failed ({type(e).__name__})")
            continue
        results.append((ms, f"dpre {bt}x{bd} w{warps} target {target}"))
    sc._BLOCKS.update(default)
    sc._TARGET_PROGRAMS = 4096
    results.append((timed(), f"default {default}"))
    for ms, name in sorted(results)[:12]:
        print(f"{ms * 1e3:8.1f} us  {name}")
    print(f"packed 1x{R}, D {D}, bf16, fwd+bwd; default {results[-1][0] * 1e3:.1f} us")


if __name__ == "__main__":
    main()
