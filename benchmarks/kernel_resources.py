"""Registers, spilled bytes and shared memory of each DDTS Triton kernel on sm_90, without a GPU.

(With ``--decode``, of the SW-SKA decode kernels too.)

A kernel that spills registers (or holds so many that one program fills an SM) is slow in a way no
CPU test shows. This compiles the DDTS kernels for an H100/H200 through the compile-only driver of
``tests/ops/sm90_compile.py`` at a real training shape (their registers depend on the constexpr
shapes), driving one forward and backward of ``ddts_triton`` in the split and the fused forms, and
reads each cubin's resource usage with the ``cuobjdump`` that ships with Triton's NVIDIA backend.
``STACK`` is the per-thread local memory: non-zero means spills.

    TRITON_INTERPRET=0 python benchmarks/kernel_resources.py                 # K 64, chunk 64, bf16
    TRITON_INTERPRET=0 python benchmarks/kernel_resources.py --set intra.num_warps=4 --set walk.BV=128
    TRITON_INTERPRET=0 python benchmarks/kernel_resources.py --decode dot=0 --decode BN=64   # + SW-SKA decode

``--decode`` also compiles the SW-SKA decode kernels (H16 D128, 1024 cached keys) with those
``rodimus.ops.triton.swska.DECODE`` overrides (integer settings; the padded-dot form, the default, takes
its key tile and warps from ``DECODE["dot_tiles"]``, so BN and num_warps apply with ``dot=0``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported: interpreted kernels are not compiled
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests.ops.sm90_compile

import torch  # noqa: E402
import triton  # noqa: E402
import triton.runtime.jit as jit  # noqa: E402
from tests.ops.sm90_compile import _Sm90Driver  # noqa: E402
from triton.runtime import driver  # noqa: E402


def _compiled_kernels() -> dict[str, object]:
    """Make every launch compile-only and remember the first compiled kernel per (name, warps)."""
    kernels: dict[str, object] = {}
    run = jit.JITFunction.run

    def compile_(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        kernels.setdefault(f"{self.fn.__name__} ({kwargs.get('num_warps', 4)} warps)", kernel)
        return kernel

    jit.JITFunction.run = compile_
    return kernels


def _usage(cubin: bytes, cuobjdump: str) -> str:
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return f"{m.group(1):>4} {m.group(2):>6}" if m else "   ?      ?"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--K", type=int, default=64, help="mem_size (key width)")
    p.add_argument("--V", type=int, default=512, help="value width (the kernels tile it; 512 keeps this fast)")
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--set", action="append", default=[], metavar="ENTRY.KEY=INT",
                   help="override rodimus.ops.triton.ddts.LAUNCH[ENTRY][KEY] (repeatable)")  # fmt: skip
    p.add_argument("--decode", action="append", default=None, metavar="KEY=INT",
                   help="also the SW-SKA decode kernels, with swska.DECODE[KEY] overridden (repeatable)")  # fmt: skip
    args = p.parse_args(argv)
    cuobjdump = str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    if not Path(cuobjdump).exists():
        raise SystemExit(f"cuobjdump not found at {cuobjdump} (it ships with triton's NVIDIA backend)")
    driver.set_active(_Sm90Driver())
    kernels = _compiled_kernels()
    from rodimus.ops.triton import ddts

    for item in args.set:
        key, _, value = item.partition("=")
        entry, _, field = key.partition(".")
        if entry not in ddts.LAUNCH or not field or not value.lstrip("-").isdigit():
            raise ValueError(f"--set {item!r}: want ENTRY.KEY=INT with ENTRY in {sorted(ddts.LAUNCH)}")
        ddts.LAUNCH[entry][field] = int(value)
    dtype = getattr(torch, args.dtype)
    T = 4 * args.chunk

    def r(n):
        return torch.randn(1, T, 1, n, dtype=dtype, requires_grad=True)

    for split in (True, False):
        ddts.LAUNCH["fwd"]["split"] = split
        ddts.LAUNCH["fwd"]["split_max_programs"] = 0  # small grids would pick the split forward anyway
        ddts.LAUNCH["fwd"]["split_with_grad"] = split
        ddts.LAUNCH["bwd_state"]["split"] = split
        ddts.LAUNCH["bwd_state"]["split_min_v"] = 0
        o, _ = ddts.ddts_triton(r(args.K), r(args.K), r(args.V), r(args.K), r(args.K), chunk_size=args.chunk,
                                output_final_state=False)  # fmt: skip
        o.float().sum().backward()
    if args.decode is not None:
        _drive_decode(args.decode, dtype)
    print(f"kernels for sm_90, DDTS at K {args.K}, V {args.V}, chunk {args.chunk}, {args.dtype}")
    print(f"{'kernel':28s} {'REG':>4} {'STACK':>6} {'SMEM':>7}")
    for name, kernel in sorted(kernels.items()):
        print(f"{name:28s} {_usage(kernel.asm['cubin'], cuobjdump)} {kernel.metadata.shared:>7}")


def _drive_decode(overrides: list[str], dtype: torch.dtype) -> None:
    from rodimus.ops.triton import swska

    for item in overrides:
        key, _, value = item.partition("=")
        ints = sorted(k for k, v in swska.DECODE.items() if isinstance(v, int))  # bools too
        if key not in ints or not value.isdigit():
            raise ValueError(f"--decode {item!r}: want KEY=INT with KEY in {ints}")
        swska.DECODE[key] = type(swska.DECODE[key])(int(value))
    H, D, S = 16, 128, 1024
    with torch.no_grad():
        swska.swska_triton(torch.randn(1, 1, H, D, dtype=dtype), torch.randn(1, S, D, dtype=dtype),
                           torch.randn(1, S, H, D, dtype=dtype), window=S)  # fmt: skip
    print("SW-SKA decode:", swska.DECODE)


if __name__ == "__main__":
    main()
