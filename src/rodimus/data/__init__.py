"""Data preparation: text -> tokenizer + packed, memory-mapped token streams."""

from rodimus.data.dataset import BatchLoader, PackedDataset, pack_batch, val_batches
from rodimus.data.prepare import PrepareConfig, ensure_prepared, prepare

__all__ = [
    "BatchLoader",
    "PackedDataset",
    "PrepareConfig",
    "ensure_prepared",
    "pack_batch",
    "prepare",
    "val_batches",
]
