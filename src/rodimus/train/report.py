"""Run outputs besides checkpoints: metrics.jsonl, the loss-curve PNG and RNG snapshots."""

from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path

import numpy as np
import torch


class MetricsLog:
    """Append-only JSONL of logged steps; on resume, rows after the restored step are dropped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a row cut short by a kill
            if row.get("step", 0) <= step:
                keep.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(x + "\n" for x in keep))
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]


def plot_losses(rows: list[dict], path: str | Path, title: str = "") -> None:
    """Training loss (raw and smoothed) and validation loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows if "loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if losses:
        ax.plot(steps, losses, alpha=0.35, lw=1, label="train loss")
        k = max(1, len(losses) // 30)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=2, label=f"train loss ({k}-step mean)")
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if val:
        ax.plot(*zip(*val, strict=True), "o-", lw=2, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def rng_snapshot() -> dict:
    """This process's RNG states in JSON-able form."""
    snap = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy": _np_state_to_json(np.random.get_state()),
        "python": _py_state_to_json(random.getstate()),
    }
    if torch.cuda.is_available():
        snap["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return snap


def rng_restore(snap: dict) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(snap["torch"])), dtype=torch.uint8))
    np.random.set_state(_np_state_from_json(snap["numpy"]))
    random.setstate(_py_state_from_json(snap["python"]))
    if "cuda" in snap and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(snap["cuda"])), dtype=torch.uint8))


def _np_state_to_json(s):
    return [s[0], s[1].tolist(), int(s[2]), int(s[3]), float(s[4])]


def _np_state_from_json(s):
    return (s[0], np.asarray(s[1], dtype=np.uint32), s[2], s[3], s[4])


def _py_state_to_json(s):
    return [s[0], list(s[1]), s[2]]


def _py_state_from_json(s):
    return (s[0], tuple(s[1]), s[2])
