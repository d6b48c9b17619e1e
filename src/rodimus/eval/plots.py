"""PNG figures of the eval reports (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = "osD^v<>ph*"


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_mqar(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Accuracy against model dimension, one panel per (seq_len, kv pairs), one line per architecture;
    a second row plots the same accuracies against recurrent-state size."""
    settings = sorted({(r["seq_len"], r["num_kv_pairs"]) for r in rows})
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    fig, axes = plt.subplots(2, len(settings), figsize=(4.2 * len(settings), 7), squeeze=False)
    for j, (T, kv) in enumerate(settings):
        for i, arch in enumerate(archs):
            pts = sorted(
                (r["d_model"], r["state_size"], r["accuracy"])
                for r in rows
                if r["arch"] == arch and (r["seq_len"], r["num_kv_pairs"]) == (T, kv)
            )
            if not pts:
                continue
            d, s, a = zip(*pts, strict=False)
            axes[0, j].plot(d, a, marker=MARKERS[i % len(MARKERS)], label=arch)
            axes[1, j].plot(s, a, marker=MARKERS[i % len(MARKERS)], label=arch)
        axes[0, j].set_title(f"seq len {T}, {kv} KV pairs")
        axes[0, j].set_xlabel("model dimension")
        axes[1, j].set_xlabel("state elements per layer")
        for ax in axes[:, j]:
            ax.set_xscale("log", base=2)
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("MQAR accuracy")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_needle(
    grid: Sequence[Sequence[float]],
    lengths: Sequence[int],
    depths: Sequence[float],
    path: str | Path,
    title: str,
) -> Path:
    """Heat map: rows needle depth (0 = start of the haystack), columns context length, cell accuracy."""
    fig, ax = plt.subplots(figsize=(1.1 * len(lengths) + 2.5, 0.6 * len(depths) + 1.8))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            ax.text(j, i, f"{grid[i][j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy")
    ax.set_title(title)
    return _save(fig, path)


def plot_bench(results: dict[str, Sequence[dict[str, Any]]], path: str | Path, device: str) -> Path:
    """Four panels against context length: cache bytes, peak memory, prefill and decode tokens/s."""
    panels = [
        ("cache_bytes", "generation cache (MiB)", 2**-20),
        ("peak_memory_bytes", "peak memory (MiB)", 2**-20),
        ("prefill_tokens_per_s", "prefill tokens/s", 1.0),
        ("decode_tokens_per_s", "decode tokens/s", 1.0),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for i, (name, rows) in enumerate(results.items()):
        for ax, (key, label, scale) in zip(axes, panels, strict=False):
            pts = [(r["context"], r[key] * scale) for r in rows if r.get(key) is not None]
            if pts:
                x, y = zip(*pts, strict=False)
                ax.plot(x, y, marker=MARKERS[i % len(MARKERS)], label=name)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context length (tokens)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    axes[0].set_yscale("symlog", linthresh=0.01)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"memory and speed against context ({device})")
    return _save(fig, path)
