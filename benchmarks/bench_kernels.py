"""Time the Triton kernels against their baselines in one run (CUDA only), and print the ratios.

DDTS core (bf16, mem_size K=64, d_inner V=4096, one head): our fused kernels vs our torch chunk form
vs fla-core's ``chunk_gla`` fed by the gate math in PyTorch (the published path; fla-core is a
baseline only, installed in the benchmark environment, never a dependency). SW-SKA (16 heads of 128)
vs SDPA with the shared key repeated per head (and flex_attention with --flex). Decode step latency.
Roofline lines use the copy bandwidth and bf16 GEMM rate measured at the start of the same run.

    python benchmarks/bench_kernels.py [--quick] [--flex] [--json out.json]
"""

# ruff: noqa: B023  (closures in loops are timed at once, inside the iteration that made them)
from __future__ import annotations

import argparse
import json
import math
import time

import torch

RESULTS: list[dict] = []
NO_FLA = False


def bench(fn, warmup=25, rep=100) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def record(group, name, shape, ms, **extra):
    row = dict(group=group, name=name, shape=shape, ms=round(ms, 4), **extra)
    RESULTS.append(row)
    print(json.dumps(row), flush=True)
    return ms


def ceilings() -> tuple[float, float]:
    x = torch.randn(512 * 2**20, device="cuda", dtype=torch.bfloat16)  # 1 GiB
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    bw = 2 * x.numel() * 2 / ms / 1e9  # TB/s, read + write
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms_mm = bench(lambda: a @ b)
    tflops = 2 * 8192**3 / ms_mm / 1e9
    record("ceiling", "copy", "1 GiB bf16", ms, tb_s=round(bw, 3))
    record("ceiling", "gemm", "8192^3 bf16", ms_mm, tflop_s=round(tflops, 1))
    return bw, tflops


def ddts_inputs(B, T, K=64, V=4096, H=1, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*s):
        return torch.randn(*s, device="cuda", dtype=dtype, generator=g).requires_grad_()

    return r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), r(B, T, H, K), r(B, T, H, K)


def fwd_bwd(fn, inputs):
    def run():
        for x in inputs:
            x.grad = None
        o = fn(*inputs)[0]
        o.backward(torch.ones_like(o))

    return run


def bench_ddts(B, T, bw, tflops, deadline):
    from rodimus.ops.ddts import ddts_chunk, ddts_gates
    from rodimus.ops.triton import ddts_triton

    K, V = 64, 4096
    shape = f"B{B} T{T} H1 K{K} V{V} bf16"
    xs = ddts_inputs(B, T, K, V)
    forms = {
        "triton": lambda *a: ddts_triton(*a, chunk_size=64),
        "triton_c32": lambda *a: ddts_triton(*a, chunk_size=32),
        "torch_chunk": lambda *a: ddts_chunk(*a, chunk_size=64),
    }
    try:
        if NO_FLA:
            raise ImportError("skipped with --no-fla")
        from fla.ops.gla import chunk_gla

        def fla_path(q, k, v, gp, tp):
            log_a, kb = ddts_gates(k, gp, tp, 1e-12)  # PyTorch gate passes, float32
            return chunk_gla(q, kb.to(q.dtype), v, g=log_a, scale=K**-0.5, output_final_state=True)

        forms["fla_chunk_gla"] = fla_path
    except Exception as e:  # noqa: BLE001
        print(f"fla-core unavailable: {e!r}")
    from rodimus.ops.triton import ddts as tri

    flat = [x.detach().reshape(B * T, 1, -1) for x in (xs[0], xs[1], xs[3], xs[4])]
    seqs = tri._sequences(None, B, T, 64, xs[0].device)
    record(
        "ddts", "triton_prep_kernel_only", shape, bench(lambda: tri._prep(*flat, seqs, K**-0.5, 1e-12, 64))
    )
    times = {}
    for name, fn in forms.items():
        if time.time() > deadline:
            print(f"skip {name} {shape}: time budget")
            continue
        with torch.no_grad():
            t_f = bench(lambda fn=fn: fn(*xs))
        t_fb = bench(fwd_bwd(fn, xs), warmup=5, rep=30)
        times[name] = (t_f, t_fb)
        record("ddts", name, shape, t_f, fwd_bwd_ms=round(t_fb, 4))
    # roofline of the fused forward: bytes = q,k,g,tau,v read once + o written; FLOPs of the chunked form
    n = B * T
    bytes_f = n * (4 * K + 2 * V) * 2
    C = 64
    flops_f = 2 * n * (2 * K * V + C * V + C * K)
    floor = max(bytes_f / bw / 1e9, flops_f / tflops / 1e9)
    if "triton" in times:
        print(
            f"roofline ddts fwd {shape}: {bytes_f / 2**20:.0f} MiB, {flops_f / 1e9:.1f} GFLOP"
            f" -> floor {floor:.3f} ms;"
            f" measured {times['triton'][0]:.3f} ms = {times['triton'][0] / floor:.2f}x floor"
        )
        RESULTS.append(
            dict(
                group="roofline",
                name="ddts_fwd",
                shape=shape,
                floor_ms=round(floor, 4),
                measured_ms=round(times["triton"][0], 4),
            )
        )
        for base in ("torch_chunk", "fla_chunk_gla"):
            if base in times:
                print(
                    f"ratio {base}/triton {shape}: fwd {times[base][0] / times['triton'][0]:.2f}x,"
                    f" fwd+bwd {times[base][1] / times['triton'][1]:.2f}x"
                )


def bench_swska(B, T, window, bw, tflops, flex, deadline, H=16, D=128):
    from rodimus.ops.triton import swska_triton

    shape = f"B{B} T{T} H{H} D{D} W{window} bf16"
    if time.time() > deadline:
        print(f"skip swska {shape}: time budget")
        return
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    k = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    v = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    pos = torch.arange(T, device="cuda")
    rel = pos[:, None] - pos[None, :]
    band = (rel >= 0) & (rel <= window)

    def ours(q, k, v):
        return (swska_triton(q, k, v, window=window),)

    def sdpa(q, k, v):  # the published path: repeat the key per head, masked SDPA
        kr = k[:, :, None, :].expand(B, T, H, D)
        o = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), kr.transpose(1, 2), v.transpose(1, 2), attn_mask=band
        )
        return (o.transpose(1, 2),)

    forms = {"triton": ours, "sdpa_repeat_k": sdpa}
    if flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        bm = create_block_mask(lambda b, h, qi, ki: (qi >= ki) & (qi - ki <= window), None, None, T, T)
        flex_c = torch.compile(flex_attention)

        def flex_path(q, k, v):
            kr = k[:, :, None, :].expand(B, T, H, D)
            o = flex_c(q.transpose(1, 2), kr.transpose(1, 2), v.transpose(1, 2), block_mask=bm)
            return (o.transpose(1, 2),)

        forms["flex_repeat_k"] = flex_path
    times = {}
    for name, fn in forms.items():
        try:
            with torch.no_grad():
                t_f = bench(lambda fn=fn: fn(q, k, v))
            t_fb = bench(fwd_bwd(fn, (q, k, v)), warmup=5, rep=30)
        except Exception as e:  # noqa: BLE001
            print(f"{name} {shape} failed: {e!r}")
            continue
        times[name] = (t_f, t_fb)
        record("swska", name, shape, t_f, fwd_bwd_ms=round(t_fb, 4))
    flops = 4 * B * T * H * D * (window + 1) * 0.5 + 4 * B * T * H * D * min(window + 1, T) * 0.5
    bytes_f = (2 * B * T * H * D + B * T * D + B * T * H * D) * 2
    floor = max(bytes_f / bw / 1e9, flops / tflops / 1e9)
    if "triton" in times:
        print(
            f"roofline swska fwd {shape}: {bytes_f / 2**20:.0f} MiB, {flops / 1e9:.1f} GFLOP"
            f" -> floor {floor:.3f} ms;"
            f" measured {times['triton'][0]:.3f} ms = {times['triton'][0] / floor:.2f}x floor"
        )
        for base in ("sdpa_repeat_k", "flex_repeat_k"):
            if base in times:
                print(
                    f"ratio {base}/triton {shape}: fwd {times[base][0] / times['triton'][0]:.2f}x,"
                    f" fwd+bwd {times[base][1] / times['triton'][1]:.2f}x"
                )


def bench_decode(bw):
    from rodimus.ops.ddts import ddts_recurrent
    from rodimus.ops.triton import ddts_decode_, swska_triton

    K, V = 64, 4096
    for B in (1, 16):
        xs = [x.detach() for x in ddts_inputs(B, 1, K, V)]
        state = torch.randn(B, 1, K, V, device="cuda")
        t_k = bench(lambda: ddts_decode_(*xs, state))
        t_t = bench(lambda: ddts_recurrent(*xs, initial_state=state))
        record(
            "decode",
            "ddts_triton_step",
            f"B{B} K{K} V{V}",
            t_k,
            torch_recurrent_ms=round(t_t, 4),
            ratio=round(t_t / t_k, 2),
            floor_ms=round(2 * B * K * V * 4 / bw / 1e9, 5),
        )
        for ctx in (1024, 4096):  # SW-SKA decode over a ring-buffer cache of ctx keys (window >= ctx)
            H, D = 16, 128
            q = torch.randn(B, 1, H, D, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(B, ctx, D, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(B, ctx, H, D, device="cuda", dtype=torch.bfloat16)
            t_s = bench(lambda: swska_triton(q, k, v, window=ctx))

            def sdpa():
                kr = k[:, :, None, :].expand(B, ctx, H, D)
                return torch.nn.functional.scaled_dot_product_attention(
                    q.transpose(1, 2), kr.transpose(1, 2), v.transpose(1, 2)
                )

            t_b = bench(sdpa)
            record(
                "decode",
                "swska_triton_step",
                f"B{B} S{ctx} H{H} D{D}",
                t_s,
                sdpa_repeat_k_ms=round(t_b, 4),
                ratio=round(t_b / t_s, 2),
                floor_ms=round(B * ctx * (H + 1) * D * 2 / bw / 1e9, 5),
            )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the B=8 T=2048 shape and window 1024")
    ap.add_argument("--flex", action="store_true", help="also time flex_attention (compiles; slow to start)")
    ap.add_argument(
        "--budget", type=float, default=420.0, help="seconds after which remaining cases are skipped"
    )
    ap.add_argument(
        "--no-fla", action="store_true", help="skip the fla-core baseline (its autotuning is slow)"
    )
    ap.add_argument("--only", default="ddts,swska,decode", help="comma list of groups to run")
    ap.add_argument("--json", default=None, help="write all rows to this file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernels needs a CUDA GPU")
    global NO_FLA
    NO_FLA = args.no_fla
    only = set(args.only.split(","))
    deadline = time.time() + args.budget
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    bw, tflops = ceilings()
    shapes = [(8, 2048)] if args.quick else [(8, 2048), (2, 8192)]
    for B, T in shapes if "ddts" in only else ():
        bench_ddts(B, T, bw, tflops, deadline)
    for B, T in shapes if "swska" in only else ():
        for w in (1024,) if args.quick else (512, 1024, 2048):
            bench_swska(B, T, w, bw, tflops, args.flex and w == 1024, deadline)
    if "decode" in only:
        bench_decode(bw)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(RESULTS, f, indent=1)
    print(
        f"done; measured ceilings {bw:.2f} TB/s copy, {tflops:.0f} TFLOP/s bf16 GEMM; math.isfinite: "
        f"{all(math.isfinite(r.get('ms', 0.0)) for r in RESULTS)}"
    )


if __name__ == "__main__":
    main()
