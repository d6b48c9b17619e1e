"""Time the Triton kernels against their baselines in one run (CUDA only), and print the ratios.

Groups (--only): ``fused`` (short conv + SiLU, gated norm with skip, input gate: Triton vs torch forms),
``layer`` (our whole mixer layer vs fla's RodimusAttention), ``ddts``, ``swska``, ``decode``, and ``sweep``
(DDTS launch settings, not run by default).

DDTS core (bf16, mem_size K=64, d_inner V=4096, one head): our fused kernels vs our torch chunk form
vs fla-core's ``chunk_gla`` fed by the gate math in PyTorch (the published path; fla-core and
flash-linear-attention are baselines only, installed in the benchmark environment, never dependencies;
their autotuners keep --fla-configs configs). SW-SKA (16 heads of 128) vs SDPA with the shared key
repeated per head (and flex_attention with --flex). Decode step latency.
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
PROFILE = False  # --profile: print the kernel table of our layer's forward+backward
FLA_CONFIGS = 4  # fla autotuners keep this many configs (--fla-configs)


def bench(fn, warmup=25, rep=100) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def graphed(fn):
    """``fn`` captured in a CUDA graph, as a replay callable: its GPU time without host launch overhead
    (eager timings of a few-kernel call are bounded by the host on these machines)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # compile and fill the caches outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def graphed_ms(name: str, fn, warmup: int, rep: int) -> float:
    """``bench`` of ``fn`` as a CUDA graph: its GPU time free of host launch costs (NaN if capture fails)."""
    try:
        return bench(graphed(fn), warmup=warmup, rep=rep)
    except Exception as e:  # noqa: BLE001
        print(f"{name}: CUDA-graph capture failed: {e!r}")
        return float("nan")


def record(group, name, shape, ms, **extra):
    row = dict(group=group, name=name, shape=shape, ms=round(ms, 4), **extra)
    RESULTS.append(row)
    print(json.dumps(row), flush=True)
    return ms


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 distance of ``a`` from ``b`` (in float64): how the scripts check an output."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def copy_bandwidth(script: str, smoke: bool) -> float:
    """Bytes/s of a 1 GiB copy on this GPU, what a script's floors are set by (NaN for a ``--smoke`` CPU
    check); a timed run without a GPU stops with a message naming ``script``."""
    if smoke:
        return float("nan")
    if not torch.cuda.is_available():
        raise SystemExit(f"{script} needs a CUDA GPU (or --smoke)")
    print(torch.cuda.get_device_name())
    return ceilings()[0] * 1e12


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
    forms = {"triton": lambda *a: ddts_triton(*a, chunk_size=64)}  # fla next: the budget may cut the tail
    try:
        if NO_FLA:
            raise ImportError("skipped with --no-fla")
        from fla.ops.gla import chunk_gla

        limit_fla_autotune(FLA_CONFIGS)

        def fla_path(q, k, v, gp, tp):
            log_a, kb = ddts_gates(k, gp, tp, 1e-12)  # PyTorch gate passes, float32
            return chunk_gla(q, kb.to(q.dtype), v, g=log_a, scale=K**-0.5, output_final_state=True)

        forms["fla_chunk_gla"] = fla_path
    except Exception as e:  # noqa: BLE001
        print(f"fla-core unavailable: {e!r}")
    forms["torch_chunk"] = lambda *a: ddts_chunk(*a, chunk_size=64)
    forms["triton_c32"] = lambda *a: ddts_triton(*a, chunk_size=32)
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
        extra = {}
        if name in ("triton", "fla_chunk_gla"):
            extra["fwd_bwd_graphed_ms"] = round(graphed_ms(f"ddts {name}", fwd_bwd(fn, xs), 5, 30), 4)
        record("ddts", name, shape, t_f, fwd_bwd_ms=round(t_fb, 4), **extra)

    def forward():
        with torch.no_grad():
            ddts_triton(*xs, chunk_size=64)

    graph_ms = record("ddts", "triton_fwd_graphed", shape, bench(graphed(forward)))
    # roofline of the fused forward: bytes = q,k,g,tau,v read once + o written; FLOPs of the chunked form
    n = B * T
    bytes_f = n * (4 * K + 2 * V) * 2
    C = 64
    flops_f = 2 * n * (2 * K * V + C * V + C * K)
    roofline_and_ratios(
        "ddts_fwd", shape, bytes_f, flops_f, bw, tflops, times, ("torch_chunk", "fla_chunk_gla"), graph_ms
    )


def roofline_and_ratios(name, shape, nbytes, flops, bw, tflops, times, baselines, graph_ms=None):
    """Print (and record) the Triton forward against its floor (eager, and as a CUDA graph when
    ``graph_ms`` is given), then each baseline's time ratio."""
    if "triton" not in times:
        return
    floor = max(nbytes / bw / 1e9, flops / tflops / 1e9)
    ours = times["triton"]
    graph = "" if graph_ms is None else f"; as a CUDA graph {graph_ms:.3f} ms = {graph_ms / floor:.2f}x floor"
    print(
        f"roofline {name} {shape}: {nbytes / 2**20:.0f} MiB, {flops / 1e9:.1f} GFLOP -> floor {floor:.3f} ms;"
        f" measured {ours[0]:.3f} ms = {ours[0] / floor:.2f}x floor{graph}"
    )
    RESULTS.append(
        dict(group="roofline", name=name, shape=shape, floor_ms=round(floor, 4), measured_ms=round(ours[0], 4),
             graphed_ms=None if graph_ms is None else round(graph_ms, 4))
    )  # fmt: skip
    for base in baselines:
        if base in times:
            fwd, fwd_bwd = times[base][0] / ours[0], times[base][1] / ours[1]
            print(f"ratio {base}/triton {shape}: fwd {fwd:.2f}x, fwd+bwd {fwd_bwd:.2f}x")


def bench_forms(group, shape, forms, inputs):
    """Time each form's forward and forward+backward (gradient of ones) and print the ratio to the first."""
    times = {}
    for name, fn in forms.items():
        with torch.no_grad():
            t_f = bench(lambda: fn(*inputs), 5, 30)
        t_fb = bench(fwd_bwd(lambda *a: (fn(*a),), inputs), 3, 20)
        times[name] = (t_f, t_fb)
        record(group, name, shape, t_f, fwd_bwd_ms=round(t_fb, 4))
    first, *rest = times
    for name in rest:
        a, b = times[name], times[first]
        print(f"ratio {name}/{first} {shape}: fwd {a[0] / b[0]:.2f}x, fwd+bwd {a[1] / b[1]:.2f}x")


def bench_fused(B, T, D=4096):
    """The fused elementwise stages (short conv + SiLU, gated norm with skip, input gate, RoPE) vs torch."""
    from rodimus.ops.gating import gate_mul
    from rodimus.ops.norm import gated_rms_norm
    from rodimus.ops.rotary import rotary
    from rodimus.ops.short_conv import short_conv
    from rodimus.ops.triton import gate_mul_triton, gated_rms_norm_triton, rotary_triton, short_conv_triton

    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*s, dtype=torch.bfloat16):
        return torch.randn(*s, device="cuda", dtype=dtype, generator=g).requires_grad_()

    shape = f"B{B} T{T} D{D} bf16"
    conv_in = (r(B, T, D), r(D, 4, dtype=torch.float32), r(D, dtype=torch.float32))
    bench_forms("short_conv", shape, {"triton": lambda *a: short_conv_triton(*a)[0],
                                      "torch": lambda *a: short_conv(*a)[0]}, conv_in)
    cu = torch.linspace(0, B * T, 9, device="cuda").long()  # 8 packed documents
    packed = tuple(x.reshape(1, B * T, D).detach().requires_grad_() if i == 0 else x for i, x in enumerate(conv_in))
    bench_forms("short_conv", f"packed 1x{B * T} 8 docs D{D} bf16",
                {"triton": lambda *a: short_conv_triton(*a, cu_seqlens=cu)[0],
                 "torch": lambda *a: short_conv(*a, cu_seqlens=cu)[0]}, packed)
    norm_in = (r(B, T, D), r(B, T, D), r(D, dtype=torch.float32), r(B, T, D), r(D, dtype=torch.float32))
    bench_forms("gated_norm", shape, {
        "triton": lambda o, gt, w, x, d: gated_rms_norm_triton(o, gt, w, 1e-5, skip_x=x, skip_weight=d),
        "torch": lambda o, gt, w, x, d: gated_rms_norm(o, gt, w, 1e-5, skip_x=x, skip_weight=d),
    }, norm_in)
    bench_forms("gate_mul", shape, {"triton": gate_mul_triton, "torch": gate_mul}, (r(B, T, D), r(B, T, D)))
    H, hd = D // 128, 128  # Rodimus+ queries: heads of 128
    pos, freq = torch.arange(T, device="cuda"), 1.0 / 10000.0 ** (torch.arange(0, hd, 2, device="cuda") / hd)
    bench_forms("rotary", f"B{B} T{T} H{H} D{hd} bf16", {
        "triton": lambda x: rotary_triton(x, pos, freq), "torch": lambda x: rotary(x, pos, freq)}, (r(B, T, H, hd),))


def sweep_ddts(B, T, deadline, K=64, V=4096):
    """Time the DDTS walks under a handful of launch settings (rodimus.ops.triton.ddts.LAUNCH)."""
    from triton.runtime.errors import OutOfResources

    from rodimus.ops.triton import ddts as tri

    shape = f"B{B} T{T} H1 K{K} V{V} bf16"
    xs = ddts_inputs(B, T, K, V)
    keep = {k: dict(v) for k, v in tri.LAUNCH.items()}

    def sweep(entry, group, cfgs, fn, warmup, rep):
        for cfg in cfgs:
            if time.time() > deadline:
                break
            tri.LAUNCH[entry] = cfg
            try:
                record(group, str(cfg), shape, bench(fn, warmup, rep))
            except OutOfResources as e:  # too large a tile for this card's shared memory
                print(f"skip {cfg}: {e}")
        tri.LAUNCH[entry] = keep[entry]

    def forward():
        with torch.no_grad():
            tri.ddts_triton(*xs, chunk_size=64)

    walks = [dict(BV=bv, num_warps=w, num_stages=1) for bv in (64, 128) for w in (4, 8)]
    fwd_split = [  # the state walk + chunk-parallel output
        dict(BV=bv, num_warps=4, num_stages=1, split=True, BV_chunk=bc) for bv, bc in ((64, 64), (128, 64), (128, 128))
    ]
    fast = [dict(keep["fwd"], BV=bv, num_warps=4, fast_stages=st) for bv, st in ((128, 1), (128, 2), (64, 2))]
    sweep("fwd", "sweep_fwd", fast + [dict(c, lowp_products=False) for c in walks + fwd_split], forward, 5, 30)
    bwd_split = [  # the chunk-parallel backward, 4 warps per _bwd_chunk program, then 8 for two of them
        dict(BV=bv, num_warps=4, num_stages=1, split=True, BV_chunk=bc, slices=ns)
        for bv, bc, ns in ((64, 64, 4), (64, 64, 8), (64, 64, 16), (64, 32, 8), (64, 32, 16), (128, 64, 8))
    ]
    bwd_split += [dict(cfg, chunk_warps=8) for cfg in bwd_split[1:3]]
    fwd_and_bwd = fwd_bwd(lambda *a: tri.ddts_triton(*a, chunk_size=64), xs)
    sweep("bwd_state", "sweep_fwd_bwd", walks + bwd_split, fwd_and_bwd, 3, 20)
    # the split forms' state walk, then the per-chunk kernels' warps
    sweep("walk", "sweep_walk", [
        dict(keep["walk"], BK=bk, BV=bv, num_stages=st) for bk, bv, st in ((16, 64, 2), (32, 64, 2), (32, 128, 2),
                                                                          (32, 128, 3), (64, 64, 2))
    ], fwd_and_bwd, 3, 20)  # fmt: skip
    for entry in ("prep", "intra"):
        sweep(entry, f"sweep_{entry}", [dict(num_warps=w) for w in (2, 4, 8)], fwd_and_bwd, 3, 20)


def limit_fla_autotune(n: int) -> None:
    """Keep the first `n` configs of every imported fla autotuner: its full sweep takes minutes per shape."""
    import sys

    from triton.runtime.autotuner import Autotuner

    for name, mod in list(sys.modules.items()):
        if not name.startswith("fla.") or mod is None:
            continue
        for obj in list(vars(mod).values()):
            while obj is not None and not isinstance(obj, Autotuner):  # look through @triton.heuristics
                obj = getattr(obj, "fn", None)
            if obj is not None and len(obj.configs) > n:
                obj.configs = obj.configs[:n]


def bench_layer(B, T, deadline, d_model=2048, mem_size=64):
    """The whole mixer layer (projections, short conv, gates, core, skip, gated norm) under bf16 autocast."""
    from rodimus.layers.mixer import RodimusMixer

    shape = f"B{B} T{T} d_model {d_model} d_inner {2 * d_model} mem {mem_size} autocast bf16"
    torch.manual_seed(0)
    layers = {
        "rodimus": RodimusMixer(d_model, 2 * d_model, mem_size, max(d_model // 64, 16), 4, 1e-12, 1e-5, 0),
    }
    if not NO_FLA:
        try:
            from fla.layers.rodimus import RodimusAttention

            limit_fla_autotune(FLA_CONFIGS)
            layers["fla_rodimus"] = RodimusAttention(hidden_size=d_model, expand_ratio=mem_size, layer_idx=0)
            limit_fla_autotune(FLA_CONFIGS)
        except Exception as e:  # noqa: BLE001
            print(f"fla layer unavailable: {e!r}")
    x = torch.randn(B, T, d_model, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    times = {}
    for name, layer in layers.items():
        if time.time() > deadline:
            print(f"skip layer {name}: time budget")
            continue
        layer.cuda()

        def fwd(layer=layer):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = layer(x)
            return out[0] if isinstance(out, tuple) else out

        def fb(fwd=fwd, layer=layer):
            x.grad = None
            layer.zero_grad(set_to_none=True)
            fwd().backward(torch.ones(B, T, d_model, device="cuda", dtype=torch.bfloat16))

        fb()  # compile/autotune outside the timing
        limit_fla_autotune(FLA_CONFIGS)
        with torch.no_grad():
            t_f = bench(fwd, warmup=5, rep=30)
        torch.cuda.reset_peak_memory_stats()
        t_fb = bench(fb, warmup=3, rep=20)
        mem = torch.cuda.max_memory_allocated() / 2**30
        t_graph = graphed_ms(f"layer {name}", fb, 3, 20)  # eagerly, the host's ~100 launches bound the wall
        times[name] = (t_f, t_fb, t_graph)
        record("layer", name, shape, t_f, fwd_bwd_ms=round(t_fb, 4), fwd_bwd_graphed_ms=round(t_graph, 4),
               peak_GiB=round(mem, 2))
        if PROFILE and name == "rodimus":
            profile_table(fb, steps=3)
        layer.cpu()
    if "rodimus" in times and "fla_rodimus" in times:
        a, b = times["fla_rodimus"], times["rodimus"]
        print(f"ratio fla_layer/ours {shape}: fwd {a[0] / b[0]:.2f}x, fwd+bwd {a[1] / b[1]:.2f}x,"
              f" fwd+bwd as CUDA graphs {a[2] / b[2]:.2f}x")


def kernel_events(fn, steps: int) -> list:
    """``torch.profiler`` events of the kernels ``fn`` runs in ``steps`` calls, longest first (on a machine
    without CUDA, for scripts' CPU checks, whatever the CPU profiler counts as device time: nothing)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    return sorted(events, key=lambda e: -e.device_time_total)


def profile_table(fn, steps: int, rows: int = 40) -> None:
    """Per-kernel GPU time of ``fn`` averaged over ``steps`` calls: where a layer's milliseconds go."""
    events = kernel_events(fn, steps)
    total = sum(e.device_time_total for e in events) / steps
    print(f"profile: {total / 1e3:.3f} ms of kernels per call")
    for e in events[:rows]:
        print(f"  {e.device_time_total / steps:9.1f} us  x{e.count // steps:<3d} {e.key[:110]}")


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
    roofline_and_ratios("swska_fwd", shape, bytes_f, flops, bw, tflops, times, ("sdpa_repeat_k", "flex_repeat_k"))


def bench_decode(bw):
    from rodimus.ops.ddts import ddts_recurrent
    from rodimus.ops.triton import ddts_decode_, swska_triton
    from rodimus.ops.triton.swska import _SWSKAFunction

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
        for ctx in (1024, 4096, 16384, 65536):  # SW-SKA decode over a ring-buffer cache of ctx keys (window >= ctx)
            H, D = 16, 128
            q = torch.randn(B, 1, H, D, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(B, ctx, D, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(B, ctx, H, D, device="cuda", dtype=torch.bfloat16)
            kr = k[:, :, None, :].expand(B, ctx, H, D)  # the key repeated per head as a view, no copy
            paths = {
                "ours": lambda: swska_triton(q, k, v, window=ctx),  # the split-over-keys decode kernels
                # what T = 1 ran before them: the training kernel with a 16-row query tile
                "training_kernel": lambda: _SWSKAFunction.apply(q, k, v, None, None, ctx, D**-0.5, None),
                "sdpa_repeat_k": lambda: torch.nn.functional.scaled_dot_product_attention(
                    q.transpose(1, 2), kr.transpose(1, 2), v.transpose(1, 2)
                ),
            }
            with torch.no_grad():
                eager = {name: bench(fn) for name, fn in paths.items()}
                graph = {name: graph_per_call(fn) for name, fn in paths.items()}
            record(
                "decode",
                "swska_triton_step",
                f"B{B} S{ctx} H{H} D{D}",
                graph["ours"],
                timing="per call inside a CUDA graph",
                sdpa_repeat_k_ms=round(graph["sdpa_repeat_k"], 4),
                ratio=round(graph["sdpa_repeat_k"] / graph["ours"], 2),
                training_kernel_ms=round(graph["training_kernel"], 4),
                eager_ms={name: round(t, 4) for name, t in eager.items()},
                floor_ms=round(B * ctx * (H + 1) * D * 2 / bw / 1e9, 5),
            )


def graph_per_call(fn, calls: int = 20) -> float:
    """ms per call of ``fn`` with ``calls`` calls captured in one CUDA graph: a one-token step's GPU time
    (an eager call of one or two kernels is bounded by the host, and one graph replay by its launch)."""

    def many():
        for _ in range(calls):
            fn()

    return bench(graphed(many), 10, 50) / calls


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
    ap.add_argument("--fla-configs", type=int, default=4, help="autotune configs kept per fla kernel")
    ap.add_argument("--only", default="fused,layer,ddts,swska,decode", help="comma list of groups (also: sweep)")
    ap.add_argument("--sweep-v", type=int, nargs="+", default=[4096, 2048], help="value widths the sweep times")
    ap.add_argument("--json", default=None, help="write all rows to this file")
    ap.add_argument("--profile", action="store_true", help="print the kernel table of our mixer layer")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernels needs a CUDA GPU")
    global NO_FLA, PROFILE
    NO_FLA = args.no_fla
    PROFILE = args.profile
    global FLA_CONFIGS
    FLA_CONFIGS = args.fla_configs
    only = set(args.only.split(","))
    deadline = time.time() + args.budget
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    bw, tflops = ceilings()
    shapes = [(8, 2048)] if args.quick else [(8, 2048), (2, 8192)]
    for B, T in shapes if "fused" in only else ():
        bench_fused(B, T)
    for B, T in shapes if "sweep" in only else ():
        for V in args.sweep_v:  # 4096, 2048: d_inner of the 1.3B-class and the 350M-class models
            sweep_ddts(B, T, deadline, V=V)
    for B, T in shapes if "layer" in only else ():
        bench_layer(B, T, deadline)
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
