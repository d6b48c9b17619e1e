"""Memory and speed against context length: generation-cache bytes, peak memory, prefill and decode tokens/s.

For each context length a random prompt is prefilled (batch 1) and then ``decode_tokens`` tokens are
decoded greedily one at a time from the cache. Peak memory is the extra over the loaded model: on CUDA
from the allocator's peak counter, on CPU from the process's resident set, sampled every 5 ms.
A context that runs out of memory (or exceeds ``max_seconds``) ends that model's curve.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rodimus.eval.common import (
    atomic_write_text,
    cache_nbytes,
    forward_with_cache,
    load_causal_lm,
    markdown_table,
    pick_device,
    pick_dtype,
)


@dataclass
class BenchConfig:
    model: str  # model folder to measure
    baselines: list[str] = field(default_factory=list)  # further model folders measured by the same code
    contexts: list[int] = field(default_factory=lambda: [2**i for i in range(10, 17)])  # 1K .. 64K tokens
    decode_tokens: int = 16  # tokens decoded after each prefill
    prefill_chunk: int | None = None  # prefill in pieces of this many tokens (bounds activation memory)
    max_seconds: float = 600.0  # stop a model's curve after a context slower than this
    device: str = "auto"  # 'auto', 'cpu' or 'cuda[:N]'
    dtype: str = "float32"  # weights dtype: float32, bfloat16, float16
    seed: int = 0  # prompt seed
    out: str = "runs/bench"  # folder for bench.json / bench.md / bench.png
    progress: bool = True  # tqdm bar over contexts

    def validate(self) -> None:
        if not self.contexts or min(self.contexts) < 1:
            raise ValueError(f"contexts must be positive token counts, got {self.contexts}")
        if self.decode_tokens < 1:
            raise ValueError(f"decode_tokens must be >= 1, got {self.decode_tokens}")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1 or unset, got {self.prefill_chunk}")
        if self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")


class PeakMemory:
    """Context manager measuring the peak extra memory (bytes) of the block it wraps."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0

    @staticmethod
    def _rss() -> int:
        try:
            import psutil
        except ImportError:  # Linux without psutil: resident pages from /proc
            import os

            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return psutil.Process().memory_info().rss

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self._rss()
            self._max, self._stop = self.base, threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, self._rss())
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, self._rss()) - self.base


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure(model: torch.nn.Module, context: int, cfg: BenchConfig, device: torch.device) -> dict[str, Any]:
    """One point of the curve (prefill + decode at one context length)."""
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(0, vocab, (1, context), generator=gen).to(device)
    chunk = cfg.prefill_chunk or context
    with PeakMemory(device) as mem:
        _sync(device)
        t0 = time.perf_counter()
        cache = None
        for s in range(0, context, chunk):
            logits, cache = forward_with_cache(model, ids[:, s : s + chunk], cache)
        _sync(device)
        t1 = time.perf_counter()
        nbytes = cache_nbytes(cache)
        for _ in range(cfg.decode_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            logits, cache = forward_with_cache(model, nxt, cache)
        _sync(device)
        t2 = time.perf_counter()
    return {
        "context": context,
        "cache_bytes": nbytes,
        "peak_memory_bytes": mem.peak,
        "prefill_seconds": t1 - t0,
        "prefill_tokens_per_s": context / (t1 - t0),
        "decode_seconds": t2 - t1,
        "decode_tokens_per_s": cfg.decode_tokens / (t2 - t1),
    }


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(err).lower()


def bench_model(path: str, cfg: BenchConfig, device: torch.device) -> list[dict[str, Any]]:
    model = load_causal_lm(path, device=device, dtype=pick_dtype(cfg.dtype))
    small = BenchConfig(model=path, decode_tokens=2, seed=cfg.seed)
    measure(model, min(64, min(cfg.contexts)), small, device)  # warm-up: one-time allocations, kernel picks
    rows: list[dict[str, Any]] = []
    for context in tqdm(sorted(cfg.contexts), desc=f"bench {Path(path).name}", disable=not cfg.progress):
        try:
            row = measure(model, context, cfg, device)
        except (RuntimeError, MemoryError) as err:
            if not _is_oom(err):
                raise
            rows.append({"context": context, "status": "out of memory"})
            break
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append({**row, "status": "ok"})
        if row["prefill_seconds"] + row["decode_seconds"] > cfg.max_seconds:
            break
    del model
    gc.collect()
    return rows


def run_bench(cfg: BenchConfig) -> tuple[dict[str, Any], dict[str, Path]]:
    cfg.validate()
    device = pick_device(cfg.device)
    results: dict[str, list[dict[str, Any]]] = {}
    for i, path in enumerate([cfg.model, *cfg.baselines]):
        name = Path(path).name or path
        results[name if name not in results else f"{name}#{i}"] = bench_model(path, cfg, device)
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    )
    out = Path(cfg.out)
    payload = {
        "config": asdict(cfg),
        "device": device_name,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    json_path = out / "bench.json"
    atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
    table = []
    for name, rows in results.items():
        for r in rows:
            table.append(
                {
                    "model": name,
                    "context": r["context"],
                    "status": r["status"],
                    "cache_MiB": r.get("cache_bytes", 0) / 2**20 if "cache_bytes" in r else None,
                    "peak_MiB": r["peak_memory_bytes"] / 2**20 if "peak_memory_bytes" in r else None,
                    "prefill_tok_s": r.get("prefill_tokens_per_s"),
                    "decode_tok_s": r.get("decode_tokens_per_s"),
                }
            )
    md_path = out / "bench.md"
    atomic_write_text(
        md_path,
        f"# Memory and speed against context ({device_name}, {cfg.dtype})\n\n"
        + markdown_table(
            table, ["model", "context", "status", "cache_MiB", "peak_MiB", "prefill_tok_s", "decode_tok_s"]
        ),
    )
    from rodimus.eval.plots import plot_bench

    png = plot_bench(
        {k: [r for r in v if r["status"] == "ok"] for k, v in results.items()}, out / "bench.png", device_name
    )
    return payload, {"json": json_path, "markdown": md_path, "png": png}
