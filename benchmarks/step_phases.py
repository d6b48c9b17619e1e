"""Where one training step's wall time goes: each phase synchronised, the host's own time, a GPU profile.

A graphed step can be host-bound (the GPU waits for launches between graphs) or GPU-bound (its kernels
are the cost); this tells which, and which kernels. Builds the ~350M trainer of ``bench_train.py``
(synthetic packed documents, ``cuda_graphs`` on a GPU), warms it up, then prints: the plain step time; each
phase (data, forward, backward, clip, optimizer, zero_grad) with a synchronisation around it; the host time
of each phase without synchronisation; and ``torch.profiler``'s kernel table over two steps.

    python benchmarks/step_phases.py --seq-len 8192 --micro-batch 2
    python benchmarks/step_phases.py --smoke      # CPU check of the script (toy sizes)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_train import build_trainer, synthetic_dataset

from rodimus.train.optim import clip_grad_norm


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="steps averaged per measurement")
    p.add_argument("--no-graphs", action="store_true", help="eager steps even on a GPU")
    p.add_argument("--smoke", action="store_true", help="toy sizes, to check the script on a CPU")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    opts = argparse.Namespace(
        seq_len=args.seq_len, micro_batch=args.micro_batch, vocab=32000, compile=False, activation_checkpointing=False,
        cuda_graphs=not args.no_graphs, chunk_size=None, smoke=args.smoke,
    )
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_dataset(Path(tmp), opts.vocab, tokens=2 * 10**7)
        tr = build_trainer("rodimus", opts, Path(tmp))
        graphed = tr.graphs is not None
        for _ in range(3):
            tr.train_step(tr.loader.next_step())
        n = args.steps
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            tr.train_step(tr.loader.next_step())
        sync()
        print(f"step {1e3 * (time.perf_counter() - t0) / n:.2f} ms (graphs: {graphed})")

        def phases(wait: bool) -> dict[str, float]:
            acc: dict[str, float] = {}

            def ph(name, fn):
                if wait:
                    sync()
                t = time.perf_counter()
                out = fn()
                if wait:
                    sync()
                acc[name] = acc.get(name, 0.0) + (time.perf_counter() - t) * 1e3 / n
                return out

            for _ in range(n):
                mb = ph("data", tr.loader.next_step)[0]
                loss, count = ph("forward", lambda mb=mb: tr._forward_loss(mb, graphed=graphed))
                ph("backward", lambda loss=loss, count=count: (loss / count).backward())
                ph("clip", lambda: clip_grad_norm(tr.optim, tr.params, tr.cfg.grad_clip))
                ph("optimizer", tr.optim.step)
                ph("zero_grad", lambda: (tr.sched.step(), tr.optim.zero_grad(set_to_none=not graphed)))
                sync()
            return acc

        for wait, what in ((True, "synchronised phases"), (False, "host time of each phase")):
            acc = phases(wait)
            parts = ", ".join(f"{k} {v:.2f}" for k, v in acc.items())
            print(f"{what}: {parts} (sum {sum(acc.values()):.2f} ms)")

        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            for _ in range(2):
                tr.train_step(tr.loader.next_step())
            sync()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60))


if __name__ == "__main__":
    main()
