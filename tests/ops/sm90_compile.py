"""Compile every Triton kernel for an H100/H200 (sm_90) on a machine without a GPU.

The CPU suite runs the kernels under Triton's interpreter, which executes them as numpy code and so
cannot catch what only the GPU compiler rejects (type rules of runtime branches, layouts, shared memory).
This script swaps Triton's active driver for one that reports an sm_90 target, turns every launch into a
compile-only ``warmup``, and drives the kernels through their real call sites (whole models forward and
backward, packed and batched, bf16 autocast and float32, prefill + cached decode, ``StaticDecoder``, and
the DDTS split forms). Results are uninitialised memory; only the compilation is checked. It prints one
JSON line: each kernel compiled (``module.name``) with the number of launches that reached it.

Run in its own process, with ``TRITON_INTERPRET=0`` set before anything imports triton:
``TRITON_INTERPRET=0 python -m tests.ops.sm90_compile`` (tests/ops/test_triton_compile.py does).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("run with TRITON_INTERPRET=0: interpreted kernels are not compiled")
os.environ["TRITON_INTERPRET"] = "0"

import torch  # noqa: E402
import triton.runtime.jit as jit  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


class _Sm90Driver:
    """What ``JITFunction.run`` asks of the driver before launching, answered for an absent sm_90 card."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return TARGET

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def _compile_only(launches: collections.Counter) -> None:
    run = jit.JITFunction.run

    def compile_(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        launches[f"{self.fn.__module__.rsplit('.', 1)[-1]}.{self.fn.__name__}"] += 1
        return kernel

    jit.JITFunction.run = compile_


def _drive() -> None:
    from rodimus.models.static_decode import StaticDecoder
    from rodimus.ops.triton import ddts, softmax_xent_grad_triton_, swska
    from tests.models.harness import build, rand_ids, tiny_config

    for dtype in (torch.float32, torch.bfloat16):  # the loss head's row kernel (CUDA-only in the model)
        softmax_xent_grad_triton_(torch.zeros(3, 50, dtype=dtype), torch.tensor([1, -1, 4]))
    ddts.LAUNCH["fwd"]["split_max_programs"] = 0  # the fused forward walk first (tiny grids pick the split)
    for block_type in ("rodimus", "rodimus_plus"):
        model = build(tiny_config(block_type, d_model=32, mixer_cfg=dict(mem_size=16), kernel_backend="triton"))
        for dtype in (torch.float32, torch.bfloat16):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                ids = rand_ids(model.config, 2, 21)
                model(ids, labels=ids).loss.backward()
                packed = rand_ids(model.config, 1, 37)
                model(packed, labels=packed, cu_seqlens=torch.tensor([0, 9, 10, 30, 37])).loss.backward()
        with torch.no_grad():
            out = model(ids[:, :12], use_cache=True)
            model(ids[:, 12:13], cache=out.cache, use_cache=True)
            dec = StaticDecoder(model, 2, use_cuda_graph=False)
            dec.prefill(ids[:, :5])
            dec.step(ids[:, 5:6], check=False)
        # the DDTS split forms (chosen by size on a real card)
        with _launch_restored(ddts.LAUNCH):
            ddts.LAUNCH["fwd"]["split"] = True
            ddts.LAUNCH["bwd_state"].update(split=True, split_min_v=0)
            model(ids, labels=ids).loss.backward()
            ddts.LAUNCH["walk"].update(segment=1, segment_min_chunks=0)  # segmented walks (2 chunks of 16)
            model(ids, labels=ids).loss.backward()
            model(packed, labels=packed, cu_seqlens=torch.tensor([0, 9, 10, 30, 37])).loss.backward()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                model(ids)  # bf16 states in the split forward without gradients
        with _launch_restored(ddts.LAUNCH):
            ddts.LAUNCH["fwd"].update(segment=1, segment_min_chunks=0)  # the fused walk over 1-chunk segments
            for bf16 in (False, True):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    model(ids, labels=ids).loss.backward()
                    with torch.no_grad():
                        model(ids)
            ddts.LAUNCH["walk"]["starts_gemm"] = True  # the segments' ends as a GEMM: T a multiple of them
            for dtype in (torch.float32, torch.bfloat16):  # the op alone: the model at T = 32 compiles all again
                with torch.no_grad():
                    ddts.ddts_triton(*(torch.randn(2, 32, 1, n, dtype=dtype) for n in (16, 16, 64, 16, 16)),
                                     chunk_size=16)  # fmt: skip
    with _launch_restored({"decode": swska.DECODE}):
        swska.DECODE["dot"] = False  # the SW-SKA decode kernels' row-sum form (model is the Rodimus+ one)
        with torch.no_grad():
            for bf16 in (False, True):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = model(ids[:, :12], use_cache=True)
                    model(ids[:, 12:13], cache=out.cache, use_cache=True)
            swska.DECODE["dot"] = True  # the padded-dot form's tile for many rows (5 x 16 > 64)
            for dtype in (torch.float32, torch.bfloat16):
                q, k, v = torch.randn(5, 1, 16, 16), torch.randn(5, 40, 16), torch.randn(5, 40, 16, 16)
                swska.swska_triton(q.to(dtype), k.to(dtype), v.to(dtype), window=64)


@contextlib.contextmanager
def _launch_restored(launch: dict):
    """Every entry of a LAUNCH table (a dict of settings dicts) as it was on entry, whatever the block
    changed; each settings dict restored in place."""
    saved = {k: dict(v) for k, v in launch.items()}
    try:
        yield
    finally:
        for k, v in saved.items():
            launch[k].clear()
            launch[k].update(v)


def main() -> None:
    launches: collections.Counter = collections.Counter()
    driver.set_active(_Sm90Driver())
    _compile_only(launches)
    _drive()
    print(json.dumps({"target": f"{TARGET.backend} sm_{TARGET.arch}", "compiled": dict(sorted(launches.items()))}))


if __name__ == "__main__":
    main()
