"""Kernel launches per layer of a training step (forward + backward), counted on the CPU.

A ~350M Rodimus step is launch-bound when run eagerly on a GPU (docs/BENCHMARKS.md): what matters is how
many kernels each layer issues. This counts them without a GPU: every aten op that would launch a kernel
(views, allocations and other metadata-only ops excluded) under a dispatch mode, and every Triton launch,
with the Triton kernels stubbed out (their results are garbage; only the count matters). The per-layer
figure is the difference between a 2-layer and a 1-layer model on a packed batch under bf16 autocast.

    python benchmarks/count_layer_ops.py [--where]
"""

from __future__ import annotations

import argparse
import collections
import traceback

import torch
import triton.runtime.interpreter as interp
import triton.runtime.jit as jit
from torch.utils._python_dispatch import TorchDispatchMode

METADATA_ONLY = {
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "squeeze", "unsqueeze", "slice",
    "select", "split", "split_with_sizes", "as_strided", "alias", "detach", "empty", "empty_like", "new_empty",
    "empty_strided", "new_empty_strided", "set_", "promote_types",
}  # fmt: skip


class _Count(TorchDispatchMode):
    def __init__(self, where: bool):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.where = where

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in METADATA_ONLY:
            loc = ""
            if self.where:
                frames = [f for f in traceback.extract_stack() if "/rodimus/" in f.filename]
                loc = f"{frames[-1].filename.split('/')[-1]}:{frames[-1].lineno}" if frames else "autograd"
            self.ops[(name, loc)] += 1
        return func(*args, **(kwargs or {}))


def _stub_triton() -> list[int]:
    launches = [0]

    def getitem(self, grid):
        def launch(*args, **kwargs):
            launches[0] += 1

        return launch

    interp.InterpretedFunction.__getitem__ = getitem
    jit.JITFunction.__getitem__ = getitem
    return launches


def count(block_type: str, n_layer: int, launches: list[int], where: bool) -> tuple[collections.Counter, int]:
    from rodimus import RodimusConfig, RodimusForCausalLM

    attn = dict(num_heads=2, window_size=64) if block_type == "rodimus_plus" else None
    cfg = RodimusConfig(
        vocab_size=256, d_model=64, n_layer=n_layer, block_type=block_type, mixer_cfg=dict(mem_size=16),
        kernel_backend="triton", **(dict(attn_cfg=attn) if attn else {}),
    )  # fmt: skip
    torch.manual_seed(0)
    model = RodimusForCausalLM(cfg).train()
    ids = torch.randint(0, 256, (1, 128))
    cu = torch.tensor([0, 40, 128])
    mode = _Count(where)
    launches[0] = 0
    with mode:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, labels=ids, cu_seqlens=cu, skip_logits=True)
        out.loss.backward()
    return mode.ops, launches[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--where", action="store_true", help="also list the per-layer ops by source line")
    args = ap.parse_args(argv)
    import rodimus.ops.triton  # noqa: F401  (registers the kernels; on a CPU under the interpreter)

    launches = _stub_triton()
    for block in ("rodimus", "rodimus_plus"):
        (ops1, t1), (ops2, t2) = (count(block, n, launches, args.where) for n in (1, 2))
        per_layer = ops2.copy()
        per_layer.subtract(ops1)
        n_ops = sum(v for v in per_layer.values() if v > 0)
        print(f"{block}: per layer {n_ops} kernel-launching aten ops + {t2 - t1} Triton launches (fwd + bwd)")
        if args.where:
            for (name, loc), v in sorted(per_layer.items(), key=lambda kv: -kv[1]):
                if v > 0:
                    print(f"  {v:3d} {name:22s} {loc}")


if __name__ == "__main__":
    main()
