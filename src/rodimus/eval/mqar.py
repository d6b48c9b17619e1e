"""Multi-query associative recall (MQAR, Arora et al. 2023 "Zoology"): data, training and the report.

A sequence opens with ``num_kv_pairs`` key-value pairs (keys from the lower half of the vocabulary,
values from the upper half); the rest of the sequence is filler (token 0) in which every key is asked
once more, followed by its value. Only those values are scored. Query positions follow Zoology's
power law, so most queries sit near the pairs and a few far away.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rodimus.eval.baselines import ARCHS, ModelSpec, build_model
from rodimus.eval.common import pick_device, write_report

IGNORE = -100


def mqar_data(
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int,
    *,
    power_a: float = 0.01,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (inputs [N, seq_len] long, targets [N, seq_len] long).

    targets[i, t] is the value the model must predict after reading inputs[i, : t + 1] (the value of the
    key at t in the query section), else -100.
    """
    if num_kv_pairs < 1:
        raise ValueError(f"num_kv_pairs must be >= 1, got {num_kv_pairs}")
    if seq_len < 4 * num_kv_pairs:
        raise ValueError(f"seq_len must be >= 4 * num_kv_pairs = {4 * num_kv_pairs}, got {seq_len}")
    if vocab_size // 2 - 1 < num_kv_pairs:
        raise ValueError(
            f"vocab_size must give >= num_kv_pairs keys: need >= {2 * num_kv_pairs + 2}, got {vocab_size}"
        )
    if not 0 < power_a <= 1:
        raise ValueError(f"power_a must be in (0, 1], got {power_a}")
    rng = np.random.default_rng(seed)
    n, ctx = num_examples, 2 * num_kv_pairs
    keys = np.argsort(rng.random((n, vocab_size // 2 - 1)), axis=1)[:, :num_kv_pairs] + 1  # distinct, >= 1
    values = rng.integers(vocab_size // 2, vocab_size, size=(n, num_kv_pairs))
    inputs = np.zeros((n, seq_len), dtype=np.int64)
    targets = np.full((n, seq_len), IGNORE, dtype=np.int64)
    inputs[:, 0:ctx:2], inputs[:, 1:ctx:2] = keys, values

    slots = (seq_len - ctx) // 2  # query slots of two tokens (key, value) after the pairs
    p = power_a * np.arange(1, slots + 1) ** (power_a - 1)  # Zoology's power law over the gap
    p = p / p.sum()
    for i in range(n):
        gaps = rng.choice(slots, size=num_kv_pairs, replace=False, p=p)
        pos = ctx + 2 * gaps
        inputs[i, pos], inputs[i, pos + 1] = keys[i], values[i]
        targets[i, pos] = values[i]
    return torch.from_numpy(inputs), torch.from_numpy(targets)


@dataclass
class MqarConfig:
    archs: list[str] = field(default_factory=lambda: list(ARCHS))  # architectures to compare
    d_models: list[int] = field(default_factory=lambda: [64, 128])  # model dimensions (x axis of the plot)
    settings: list[tuple[int, int]] = field(default_factory=lambda: [(128, 8)])  # (seq_len, num_kv_pairs)
    vocab_size: int = 8192  # Zoology's vocabulary
    n_layer: int = 2  # blocks per model
    mem_size: int = 16  # Rodimus state rows (Mamba2 d_state, GLA key width follow it)
    window: int = 32  # Rodimus+ sliding window W
    lrs: list[float] = field(default_factory=lambda: [1e-3])  # learning rates swept; the best is reported
    num_train: int = 20000  # training sequences per setting
    num_test: int = 1000  # held-out sequences per setting
    epochs: int = 8  # passes over the training set
    batch_size: int = 64  # sequences per step
    weight_decay: float = 0.1  # AdamW decay
    seed: int = 0  # data and init seed
    device: str = "auto"  # 'auto', 'cpu' or 'cuda[:N]'
    out: str = "runs/eval/mqar"  # folder for mqar.json / mqar.md / mqar.png
    progress: bool = True  # tqdm bar over training steps

    def validate(self) -> None:
        bad = [a for a in self.archs if a not in ARCHS]
        if bad or not self.archs:
            raise ValueError(f"archs must be a non-empty subset of {ARCHS}, got {self.archs}")
        if not self.d_models or min(self.d_models) < 1:
            raise ValueError(f"d_models must be positive ints, got {self.d_models}")
        if not self.settings:
            raise ValueError("settings must hold at least one (seq_len, num_kv_pairs)")
        for name in ("num_train", "num_test", "epochs", "batch_size", "n_layer", "mem_size", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lrs or min(self.lrs) <= 0:
            raise ValueError(f"lrs must be positive, got {self.lrs}")


def masked_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE
    )


@torch.no_grad()
def recall_accuracy(
    model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, device: torch.device
) -> float:
    """Fraction of queried values predicted exactly (argmax at the key position)."""
    model.eval()
    correct = total = 0
    for s in range(0, len(inputs), batch_size):
        x, y = inputs[s : s + batch_size].to(device), targets[s : s + batch_size].to(device)
        pred = model(input_ids=x).logits.argmax(-1)
        mask = y != IGNORE
        correct += int((pred[mask] == y[mask]).sum())
        total += int(mask.sum())
    return correct / max(total, 1)


def train_one(
    model: torch.nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    cfg: MqarConfig,
    lr: float,
    device: torch.device,
    desc: str,
) -> float:
    """AdamW with linear warm-up then cosine decay; returns the final training loss."""
    inputs, targets = train
    steps_per_epoch = math.ceil(len(inputs) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, total // 10)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_val = float("nan")
    model.train()
    with tqdm(total=total, desc=desc, leave=False, disable=not cfg.progress) as bar:
        for _ in range(cfg.epochs):
            order = torch.randperm(len(inputs), generator=gen)
            for s in range(0, len(inputs), cfg.batch_size):
                idx = order[s : s + cfg.batch_size]
                x, y = inputs[idx].to(device), targets[idx].to(device)
                loss = masked_loss(model(input_ids=x).logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                loss_val = loss.item()
                bar.set_postfix(loss=f"{loss_val:.3f}", refresh=False)
                bar.update(1)
    return loss_val


def run_mqar(cfg: MqarConfig) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Train and test every (setting, d_model, arch, lr); report the best lr per cell."""
    cfg.validate()
    device = pick_device(cfg.device)
    rows: list[dict[str, Any]] = []
    for seq_len, kv in cfg.settings:
        train = mqar_data(cfg.num_train, seq_len, kv, cfg.vocab_size, seed=cfg.seed)
        test = mqar_data(cfg.num_test, seq_len, kv, cfg.vocab_size, seed=cfg.seed + 1_000_003)
        for d_model in cfg.d_models:
            for arch in cfg.archs:
                best: dict[str, Any] | None = None
                for lr in cfg.lrs:
                    torch.manual_seed(cfg.seed)
                    spec = ModelSpec(
                        arch, d_model, cfg.n_layer, cfg.vocab_size, seq_len, cfg.mem_size, window=cfg.window
                    )
                    model, state = build_model(spec)
                    model = model.to(device)
                    t0 = time.perf_counter()
                    loss = train_one(
                        model, train, cfg, lr, device, f"{arch} d={d_model} T={seq_len} lr={lr:g}"
                    )
                    acc = recall_accuracy(model, *test, cfg.batch_size, device)
                    row = {
                        "arch": arch,
                        "d_model": d_model,
                        "seq_len": seq_len,
                        "num_kv_pairs": kv,
                        "lr": lr,
                        "accuracy": acc,
                        "train_loss": loss,
                        "state_size": state,
                        "params": sum(p.numel() for p in model.parameters()),
                        "seconds": time.perf_counter() - t0,
                    }
                    if best is None or acc > best["accuracy"]:
                        best = row
                if best is None:
                    raise ValueError("lrs must name at least one learning rate")
                rows.append(best)
                tqdm.write(
                    f"mqar {arch:13s} d={d_model:<4d} T={seq_len:<4d} kv={kv:<3d} acc={best['accuracy']:.3f}"
                )
    out = Path(cfg.out)
    cols = [
        "arch",
        "d_model",
        "seq_len",
        "num_kv_pairs",
        "state_size",
        "params",
        "lr",
        "accuracy",
        "train_loss",
    ]
    json_path, md_path = write_report(
        out,
        "mqar",
        {"config": asdict(cfg)},
        rows,
        cols,
        "Multi-query associative recall (test accuracy, best lr)",
    )
    from rodimus.eval.plots import plot_mqar

    png = plot_mqar(rows, out / "mqar.png")
    return rows, {"json": json_path, "markdown": md_path, "png": png}
