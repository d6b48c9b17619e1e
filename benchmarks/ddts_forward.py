"""The DDTS forward without gradients (prefill, evaluation) against its memory floor, per launch setting.
With ``--backward``: forward+backward (training) per launch setting instead.

For each ``LAUNCH`` variant (JSON, merged into ``rodimus.ops.triton.ddts.LAUNCH`` per entry) this prints the
eager time, the time as a captured CUDA graph (the GPU's own time: an eager call of a few kernels is bounded
by the host here), the ratio to the floor (q, k, g_pre, tau_pre, v read once and o written, at the copy
bandwidth measured in the same run), the relative error of its output against the default's and the
kernels' times from ``torch.profiler``; first ``_prep`` alone, with float32 and with bf16 products.
``--backward`` prints the eager and graphed forward+backward times (an all-ones output gradient), the
relative error of every input's gradient against the default's (the largest of the five) and the kernels'
times. Shapes: bf16, K 64, V 4096, B8 T2048 and B2 T8192.

    python benchmarks/ddts_forward.py
    python benchmarks/ddts_forward.py '[{}, {"fwd": {"split_max_programs": 0, "BV": 64}}, {"prep": {"BK": 16}}]'
    python benchmarks/ddts_forward.py --backward '[{}, {"bwd_state": {"chunk_stages": 3}}, {"walk": {"num_stages": 2}}]'
    python benchmarks/ddts_forward.py --smoke        # CPU check of the script (Triton interpreter, toy sizes)
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_kernels import bench, copy_bandwidth, fwd_bwd, graphed, kernel_events, rel_err

from rodimus.ops.triton import ddts as tri


def kernel_times(fn, calls: int = 5, top: int = 5) -> str:
    """The ``top`` longest kernels of ``fn``, microseconds per call."""
    return ", ".join(f"{e.key[:12]} {e.device_time_total / calls:.0f}" for e in kernel_events(fn, calls)[:top])


def _timer(smoke: bool):
    def timed(fn):
        if smoke:
            fn()
            return float("nan")
        return bench(fn, 10, 60)

    return timed


def _inputs(B: int, T: int, K: int, V: int) -> list[torch.Tensor]:
    """q, k, v, g_pre, tau_pre in bf16, one head (the model's layout)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)
    return [
        (torch.randn(B, T, 1, n, device=dev, generator=g) * scale).bfloat16()
        for n, scale in ((K, 1.0), (K, 1.0), (V, 1.0), (K, 2.0), (K, 1.0))
    ]


def _with_launch(var: dict, base: dict) -> None:
    for name, cfg in base.items():
        tri.LAUNCH[name] = dict(cfg, **var.get(name, {}))


def run_shape(B: int, T: int, K: int, V: int, variants: list[dict], bw: float, smoke: bool) -> None:
    timed = _timer(smoke)
    q, k, v, gp, tp = _inputs(B, T, K, V)
    flat = [x.reshape(B * T, 1, K) for x in (q, k, gp, tp)]
    seqs = tri._sequences(None, B, T, 64, q.device)
    for dt in (torch.float32, torch.bfloat16):
        ms = timed(lambda dt=dt: tri._prep(*flat, seqs, K**-0.5, 1e-12, 64, dt))
        print(f"B{B} T{T} _prep alone, {str(dt)[6:]} products: {ms * 1e3:.1f} us", flush=True)

    def forward():
        with torch.no_grad():
            return tri.ddts_triton(q, k, v, gp, tp, chunk_size=64)

    floor_us = B * T * (4 * K + 2 * V) * 2 / bw * 1e6
    base = {name: dict(cfg) for name, cfg in tri.LAUNCH.items()}
    ref = forward()[0]  # the default's output: a variant that differs by more than bf16 rounding is wrong
    for var in variants:
        _with_launch(var, base)
        err = rel_err(forward()[0], ref)
        eager = timed(forward)
        graph = float("nan") if smoke else bench(graphed(forward), 10, 60)
        print(
            f"B{B} T{T} {json.dumps(var)}: eager {eager * 1e3:.0f} us, graph {graph * 1e3:.0f} us = "
            f"{graph * 1e3 / floor_us:.2f}x the {floor_us:.0f} us floor, {err:.1e} from the default | "
            f"{kernel_times(forward)}",
            flush=True,
        )
    _with_launch({}, base)


def run_backward(B: int, T: int, K: int, V: int, variants: list[dict], smoke: bool) -> None:
    timed = _timer(smoke)
    xs = [x.requires_grad_() for x in _inputs(B, T, K, V)]
    step = fwd_bwd(lambda *a: tri.ddts_triton(*a, chunk_size=64), xs)
    base = {name: dict(cfg) for name, cfg in tri.LAUNCH.items()}
    step()
    ref = [x.grad.clone() for x in xs]  # the default's gradients
    for var in variants:
        _with_launch(var, base)
        step()
        err = max(rel_err(x.grad, r) for x, r in zip(xs, ref, strict=True))
        eager = timed(step)
        graph = float("nan") if smoke else bench(graphed(step), 5, 30)
        print(
            f"B{B} T{T} fwd+bwd {json.dumps(var)}: eager {eager * 1e3:.0f} us, graph {graph * 1e3:.0f} us, "
            f"gradients {err:.1e} from the default | {kernel_times(step, 3, 7)}",
            flush=True,
        )
    _with_launch({}, base)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("variants", nargs="?", default="[{}]", help="JSON list of LAUNCH overrides")
    p.add_argument("--backward", action="store_true", help="forward+backward per variant instead")
    p.add_argument("--smoke", action="store_true", help="toy sizes, one call each, no timing (CPU check)")
    args = p.parse_args(argv)
    variants = json.loads(args.variants)
    bw = float("nan") if args.backward else copy_bandwidth("ddts_forward", args.smoke)
    for B, T in [(1, 128)] if args.smoke else [(8, 2048), (2, 8192)]:
        V = 128 if args.smoke else 4096
        if args.backward:
            run_backward(B, T, 64, V, variants, args.smoke)
        else:
            run_shape(B, T, 64, V, variants, bw, args.smoke)


if __name__ == "__main__":
    main()
