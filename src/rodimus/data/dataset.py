"""Memory-mapped packed token streams and a deterministic, resumable, rank-sharded batch order.

The order of training windows is a pure function of (seed, sample index): the loader's whole state is
the number of samples consumed, so resuming is exact and every rank can compute its own share of each
global batch without talking to the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class PackedDataset:
    """One split of a prepared folder as fixed, non-overlapping windows of `seq_len` tokens."""

    def __init__(self, folder: str | Path, split: str, seq_len: int):
        folder = Path(folder)
        meta_file = folder / "meta.json"
        if not meta_file.is_file():
            raise ValueError(f"data: {folder} is not a prepared dataset (no meta.json); run `rodimus prepare`")
        self.meta = json.loads(meta_file.read_text())
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        self.seq_len = seq_len
        self.eos_id = int(self.meta["eos_id"])
        self.tokens = np.memmap(folder / f"{split}.bin", dtype=np.dtype(self.meta["dtype"]), mode="r")
        self.num_windows = len(self.tokens) // seq_len
        if self.num_windows < 1:
            raise ValueError(
                f"data: {split} split of {folder} has {len(self.tokens)} tokens, fewer than seq_len={seq_len}"
            )

    def window(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[i * self.seq_len : (i + 1) * self.seq_len], dtype=np.int64)


class WindowOrder:
    """Sample index -> window index: a fresh seeded permutation of all windows for every epoch."""

    def __init__(self, num_windows: int, seed: int):
        self.n = num_windows
        self.seed = seed
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, k: int) -> int:
        epoch, pos = divmod(k, self.n)
        perm = self._cache.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._cache = {epoch: perm}  # keep one epoch: sampling is sequential
        return int(perm[pos])


def pack_batch(windows: list[np.ndarray], eos_id: int, reset_at_docs: bool = True) -> dict[str, torch.Tensor]:
    """Stack windows into one B == 1 row with `cu_seqlens` so no state or attention crosses a document.

    Segments start at every EOS (each document begins with one) and at every window start. Labels equal
    the inputs (the model shifts them); the label at each window start is -100 because the token before
    it belongs to an unrelated window. With `reset_at_docs=False` (models without `cu_seqlens`, e.g. the
    Llama baseline) a plain [B, T] batch is returned instead.
    """
    x = torch.from_numpy(np.stack(windows))  # [B, T] int64
    B, T = x.shape
    if not reset_at_docs:
        return {"input_ids": x, "labels": x.clone()}
    flat = x.reshape(1, B * T)
    labels = flat.clone()
    labels[0, T::T] = -100
    starts = torch.zeros(B * T, dtype=torch.bool)
    starts[::T] = True
    starts |= flat[0] == eos_id
    starts[0] = True
    bounds = torch.nonzero(starts).flatten()
    cu = torch.cat([bounds, torch.tensor([B * T])]).to(torch.int32)
    return {"input_ids": flat, "labels": labels, "cu_seqlens": cu}


class BatchLoader:
    """Yields this rank's micro-batches for each optimizer step; state = samples consumed (global)."""

    def __init__(
        self,
        dataset: PackedDataset,
        *,
        micro_batch: int,
        grad_accum: int,
        rank: int,
        world_size: int,
        seed: int,
        reset_at_docs: bool = True,
    ):
        self.ds = dataset
        self.micro_batch = micro_batch
        self.grad_accum = grad_accum
        self.rank = rank
        self.world_size = world_size
        self.global_batch = micro_batch * grad_accum * world_size
        self.order = WindowOrder(dataset.num_windows, seed)
        self.reset_at_docs = reset_at_docs
        self.samples_consumed = 0

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        """The `grad_accum` micro-batches of this rank for the next optimizer step."""
        base = self.samples_consumed
        per_rank = self.micro_batch * self.grad_accum
        mine = range(base + self.rank * per_rank, base + (self.rank + 1) * per_rank)
        idx = [self.order(k) for k in mine]
        self.samples_consumed += self.global_batch
        out = []
        for a in range(self.grad_accum):
            chunk = idx[a * self.micro_batch : (a + 1) * self.micro_batch]
            out.append(pack_batch([self.ds.window(i) for i in chunk], self.ds.eos_id, self.reset_at_docs))
        return out

    def state_dict(self) -> dict:
        return {"samples_consumed": self.samples_consumed, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        self.samples_consumed = int(state["samples_consumed"])


def val_batches(
    dataset: PackedDataset,
    *,
    micro_batch: int,
    max_windows: int,
    rank: int,
    world_size: int,
    reset_at_docs: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """A fixed validation set: `max_windows` windows spread evenly over the split (so it samples many
    documents, not the first few), divided across ranks by window.

    The count is rounded down to a multiple of the world size so every rank runs the same number of
    forward passes (FSDP needs all ranks in every forward)."""
    n = min(dataset.num_windows, max_windows) // world_size * world_size
    if n == 0:
        raise ValueError(
            f"data: validation split has {dataset.num_windows} windows, fewer than the "
            f"{world_size} ranks; use a larger val_fraction or shorter seq_len"
        )
    chosen = np.linspace(0, dataset.num_windows - 1, n).round().astype(np.int64).tolist()
    mine = chosen[rank::world_size]
    return [
        pack_batch([dataset.window(i) for i in mine[j : j + micro_batch]], dataset.eos_id, reset_at_docs)
        for j in range(0, len(mine), micro_batch)
    ]
