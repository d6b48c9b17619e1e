"""cu_seqlens, the packed-documents offsets every op takes: one validity check, index tensors derived
once per forward, and fixed-size padding.

The check reads the offsets' values, which on a GPU is a host sync. Inside :func:`shared_derived` (a model
forward) each tensor is checked once and every layer's op then finds it checked (one sync per forward,
not one per layer). Under CUDA-graph capture no value can be read, so the check is skipped there: the
captured step replays on batches the trainer built itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

import torch


def capturing() -> bool:
    """True while the current CUDA stream is being captured into a graph (no host reads allowed)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def seq_index(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Document index of every packed position: [T] long."""
    pos = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].long(), pos, right=True)


def check_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> int:
    """Validate offsets [0, ..., total] (non-decreasing, 1-D integers); return the document count N."""
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError("cu_seqlens must be a 1-D integer tensor [0, ..., T] of length N + 1 >= 2")
    if not capturing():
        derived(cu_seqlens, ("checked", total), lambda: _check_values(cu_seqlens, total))
    return cu_seqlens.numel() - 1


def _check_values(cu_seqlens: torch.Tensor, total: int) -> bool:
    bad = (cu_seqlens[0] != 0) | (cu_seqlens[-1] != total) | (cu_seqlens.diff() < 0).any()
    if bool(bad):
        raise ValueError(f"cu_seqlens must rise from 0 to T={total}, got {cu_seqlens.tolist()}")
    return True


_T = TypeVar("_T")
_derived: ContextVar[dict | None] = ContextVar("rodimus_packing_derived", default=None)


@contextlib.contextmanager
def shared_derived() -> Iterator[None]:
    """Inside, :func:`derived` computes each index tensor once per cu_seqlens tensor (one model forward).

    Its entries live only as long as the block: under CUDA-graph capture they are then computed inside the
    graph from the captured offsets, never carried in from an earlier eager call.
    """
    token = _derived.set({})
    try:
        yield
    finally:
        _derived.reset(token)


def reuse_derived() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """A context-manager factory that re-enters the current :func:`shared_derived` block's entries.

    For work done later on behalf of this forward (a rebuild in backward): it finds the index tensors
    the forward derived instead of deriving them again. Outside a block it re-enters none.
    """
    memo = _derived.get()

    @contextlib.contextmanager
    def scope() -> Iterator[None]:
        token = _derived.set(memo)
        try:
            yield
        finally:
            _derived.reset(token)

    return scope


def derived(cu_seqlens: torch.Tensor, key: tuple, fn: Callable[[], _T]) -> _T:
    """``fn()`` (a function of cu_seqlens and ``key``), computed once per tensor version inside
    :func:`shared_derived` (a raising ``fn`` stores nothing).

    Every layer's ops derive the same per-row document indices from the same offsets; sharing them saves
    ~25 small kernels per layer.
    """
    memo = _derived.get()
    if memo is None:
        return fn()
    k = (id(cu_seqlens), cu_seqlens._version, *key)
    if k not in memo:
        memo[k] = (cu_seqlens, fn())  # holds cu_seqlens so its id is not reused within the block
    return memo[k][1]


def document_starts(cu_seqlens: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    """int32 [total]: the first row of each packed row's document (shared inside :func:`shared_derived`)."""
    return _document_bound(cu_seqlens, total, device, 0)


def document_ends(cu_seqlens: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    """int32 [total]: one past the last row of each packed row's document (shared like the starts)."""
    return _document_bound(cu_seqlens, total, device, 1)


def _document_bound(cu_seqlens: torch.Tensor, total: int, device: torch.device, shift: int) -> torch.Tensor:
    """cu[doc + shift] per row, the document index found once for starts and ends alike."""
    cu = cu_seqlens.to(device)
    doc = derived(cu_seqlens, ("doc_index", total, device), lambda: seq_index(cu, total))
    return derived(
        cu_seqlens, ("doc_bound", shift, total, device), lambda: cu[doc + shift].to(torch.int32).contiguous()
    )


def pad_cu_seqlens(cu_seqlens: torch.Tensor, n_docs: int) -> torch.Tensor | None:
    """[N + 1] offsets -> [n_docs + 1] by appending empty documents at the end; None when N > n_docs.

    Every op skips empty documents, so the padded batch computes exactly what the original does; a fixed
    length lets a captured CUDA graph replay batches with different document counts.
    """
    extra = n_docs + 1 - cu_seqlens.numel()
    if extra < 0:
        return None
    if extra == 0:
        return cu_seqlens
    return torch.cat([cu_seqlens, cu_seqlens[-1:].expand(extra)])
