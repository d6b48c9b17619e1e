"""Batched decoding of Rodimus / Rodimus+ rows through :class:`rodimus.models.static_decode.StaticDecoder`.

Eager decoding over a ``DynamicCache`` is host-bound on a GPU (thousands of small launches a step);
the StaticDecoder advances fixed buffers in place and replays one CUDA graph per step. Its batch
size is fixed, so there is one decoder per size bucket (1, 2, 4, ... up to ``max_batch_size``):
active requests occupy rows ``0..n-1`` of the smallest bucket that holds them, the rest are dummy
rows whose outputs are ignored. Rows stay resident while the composition is unchanged; when it
changes they are gathered (``index_select``) into the target bucket's buffers, in place, so the
buffers a captured graph reads never move. Prefill and the per-request :class:`RowState` (what
prefix snapshots store) are the eager backend's; rows are converted on the way in and out.
Each row carries its own position, so Rodimus+ needs no shared clock nor RoPE rebase here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rodimus.models.static_decode import _EMPTY, StaticDecoder
from rodimus.serve.state import RecurrentBackend, RowState


def bucket_sizes(max_batch_size: int) -> list[int]:
    """Powers of two below ``max_batch_size``, then ``max_batch_size`` itself."""
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    return [*sizes, max_batch_size]


@dataclass
class StaticBatch:
    decoder: StaticDecoder  # the bucket whose rows 0..size-1 hold the active requests
    lengths: list[int]  # true position of each active row
    row_bytes: int  # state bytes of one row (for stats)

    @property
    def size(self) -> int:
        return len(self.lengths)

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.size


class StaticBackend(RecurrentBackend):
    """Eager prefill (one request at a time, as offline generation reads a prompt), static decode."""

    def __init__(self, model, max_batch_size: int, use_cuda_graph: bool | None = None) -> None:
        super().__init__(model)
        self.buckets = bucket_sizes(max_batch_size)
        self.use_cuda_graph = use_cuda_graph
        self._decoders: dict[int, StaticDecoder] = {}
        self._state_dtype = model.get_input_embeddings().weight.dtype  # conv state / keys in RowState

    # ---- buffers ------------------------------------------------------------------------------
    def _decoder(self, n: int) -> StaticDecoder:
        size = next(b for b in self.buckets if b >= n)
        dec = self._decoders.get(size)
        if dec is None:
            dec = StaticDecoder(self.model, size, use_cuda_graph=self.use_cuda_graph)
            # a one-token prefill marks the decoder ready; every row is overwritten before it is used
            dec.prefill(torch.zeros(size, 1, dtype=torch.long, device=self.device))
            self._decoders[size] = dec
        return dec

    def _row_buffers(self, dec: StaticDecoder) -> list[torch.Tensor]:
        """Every buffer with a leading batch dim (the per-row state)."""
        bufs = [*dec.conv_state, *dec.rec_state, dec.pos]
        if self.is_plus:
            bufs += [*dec.keys, *dec.values, dec.slot_pos]
        return bufs

    def _write_row(self, dec: StaticDecoder, row: int, s: RowState) -> None:
        for i, lay in enumerate(s.layers):
            dec.conv_state[i][row].copy_(lay[0][0])
            dec.rec_state[i][row].copy_(lay[1][0])
        dec.pos[row] = s.length
        if not self.is_plus:
            return
        dec.slot_pos[row].fill_(_EMPTY)
        c = s.layers[0][2].shape[-2]  # keys kept: those of positions length - c .. length - 1
        if c == 0:
            return
        p = torch.arange(s.length - c, s.length, device=self.device)
        slot = p % dec.slots
        dec.slot_pos[row, slot] = p
        for i, lay in enumerate(s.layers):
            dec.keys[i][row, slot] = lay[2][0, 0].float()
            dec.values[i][row][:, slot] = lay[3][0].float()

    # ---- batch management ---------------------------------------------------------------------
    @torch.inference_mode()
    def merge(self, batch: StaticBatch | None, keep: list[int], new: list[RowState]) -> StaticBatch | None:
        """Rows ``keep`` of ``batch`` (in order) followed by the ``new`` states, as rows 0..n-1."""
        keep = keep if batch is not None else []
        n = len(keep) + len(new)
        if n == 0:
            return None
        dec = self._decoder(n)
        if keep and not (batch.decoder is dec and keep == list(range(len(keep)))):  # else: resident
            idx = torch.tensor(keep, dtype=torch.long, device=self.device)
            for src, dst in zip(self._row_buffers(batch.decoder), self._row_buffers(dec), strict=True):
                dst[: len(keep)].copy_(src.index_select(0, idx))  # index_select copies: src may be dst
        for j, s in enumerate(new):
            self._write_row(dec, len(keep) + j, s)
        lengths = [batch.lengths[i] for i in keep] + [s.length for s in new]
        row_bytes = batch.row_bytes if batch is not None else new[0].nbytes
        return StaticBatch(dec, lengths, row_bytes)

    @torch.inference_mode()
    def decode(self, batch: StaticBatch, tokens: list[int]) -> torch.Tensor:
        """One step for every row; returns next-token logits [n, V] (dummy rows dropped)."""
        dec, n = batch.decoder, batch.size
        ids = torch.zeros(dec.batch_size, dtype=torch.long)
        ids[:n] = torch.tensor(tokens, dtype=torch.long)
        logits = dec.step(ids.to(self.device), check=False)  # ids were range-checked on submit / sampled
        batch.lengths = [x + 1 for x in batch.lengths]
        return logits[:n].clone()  # the decoder's output buffer is overwritten by the next step

    @torch.inference_mode()
    def row_state(self, batch: StaticBatch, i: int) -> RowState:
        dec, length = batch.decoder, batch.lengths[i]
        layers = []
        if self.is_plus:
            c = min(length, self.window_keep)
            slot = torch.arange(length - c, length, device=self.device) % dec.slots
        for li in range(len(dec.layers)):
            t = [
                dec.conv_state[li][i : i + 1].to(self._state_dtype, copy=True),
                dec.rec_state[li][i : i + 1].clone(),
            ]
            if self.is_plus:
                t += [
                    dec.keys[li][i, slot][None, None].to(self._state_dtype),
                    dec.values[li][i][:, slot][None].to(self._state_dtype),
                ]
            layers.append(tuple(t))
        return RowState(layers, length)

    def batch_nbytes(self, batch: StaticBatch) -> int:
        return batch.nbytes
