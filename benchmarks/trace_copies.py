"""Where a training step's copies come from: every aten copy / cast / contiguous, by source line.

A GPU profile shows ``aten::copy_`` as one row (hundreds of calls, ~6% of a 342M Rodimus step) without
saying who asked for them. This runs one training step of the benchmark models at toy sizes under a
``TorchDispatchMode`` that records each copying op with its shape and the innermost ``rodimus`` (or
``transformers``) source line on the Python stack; copies made by the autograd engine itself (casts'
backward, gradient accumulation) have no such line and are grouped as ``<autograd engine>``. Copies the
Triton interpreter makes to run kernels on a CPU are left out (their innermost frame is inside triton).

Run (CPU, the Triton path through the interpreter):
    RODIMUS_KERNELS=triton TRITON_INTERPRET=1 python benchmarks/trace_copies.py --models rodimus
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

COPYING = {"copy_", "_to_copy", "clone", "contiguous", "cat", "stack", "_copy_from", "index_put_"}


class CopyTracer(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.rows: collections.Counter = collections.Counter()
        self.bytes: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in COPYING:
            where = _source_line()
            if where is not None:
                t = out if isinstance(out, torch.Tensor) else args[0]
                key = (where, name, tuple(t.shape), str(t.dtype).replace("torch.", ""))
                self.rows[key] += 1
                self.bytes[key] += t.numel() * t.element_size()
        return out


def _source_line() -> str | None:
    """The innermost project frame, ``<autograd engine>`` when none, None inside triton (interpreter)."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        f = frame.filename
        if "/triton/" in f:
            return None
        if "/rodimus/train/" in f:  # the training loop's own line (loss.backward()): the engine's copy
            break
        if "/rodimus/" in f and "trace_copies" not in f or "/transformers/" in f:
            return f"{f.split('/src/')[-1].split('site-packages/')[-1]}:{frame.lineno} {frame.line}"
    return "<autograd engine>"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="rodimus,rodimus_plus", help="comma list of rodimus, rodimus_plus")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64, help="1024 for the benchmark models' widths")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=512)
    args = p.parse_args(argv)

    from bench_train import synthetic_dataset

    from rodimus.train.config import preset_config
    from rodimus.train.distributed import DistInfo
    from rodimus.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        synthetic_dataset(data, args.vocab, tokens=1 << 16)
        for kind in args.models.split(","):
            cfg = preset_config({"rodimus": "rodimus-350m", "rodimus_plus": "rodimus-plus-350m"}[kind])
            cfg.out, cfg.seq_len, cfg.micro_batch, cfg.grad_accum = str(data / kind), args.seq_len, args.micro_batch, 1
            cfg.precision, cfg.eval_windows = "bf16", 1
            small = args.d_model < 1024
            cfg.model.update(d_model=args.d_model, n_layer=args.layers, vocab_size=args.vocab)
            if small:
                cfg.model["mixer_cfg"] = dict(mem_size=16)
            if "attn_cfg" in cfg.model:
                cfg.model["attn_cfg"] = dict(num_heads=2 if small else args.d_model // 128, window_size=64)
            trainer = Trainer(cfg, DistInfo(device=torch.device("cpu")), data_dir=data, progress=False)
            trainer.train_step(trainer.loader.next_step())  # warm: the first step builds caches
            tracer = CopyTracer()
            with tracer:
                trainer.train_step(trainer.loader.next_step())
            layers = cfg.model["n_layer"]
            print(f"--- {kind}: {sum(tracer.rows.values())} copying ops in one step ({layers} layers)")
            print(f"{'calls':>5s} {'MiB':>8s}  op, shape, dtype, source")
            for key, n in sorted(tracer.rows.items(), key=lambda kv: -tracer.bytes[kv[0]]):
                where, name, shape, dtype = key
                print(f"{n:5d} {tracer.bytes[key] / 2**20:8.3f}  {name} {list(shape)} {dtype}  {where}")


if __name__ == "__main__":
    main()
