"""A micro-batch's forward and backward captured once as CUDA graphs and replayed every step.

At the ~350M shapes a Rodimus layer runs ~100 kernels of tens of microseconds each: the host launches them
more slowly than the GPU runs them (an H200 profile showed the GPU busy ~70% of the step,
docs/BENCHMARKS.md). A replayed graph launches all of them at once. Graphs fix every shape, so the packed
row is always [1, B*T] and ``cu_seqlens`` is padded with empty documents to ``max_docs``
(:func:`rodimus.ops.packing.pad_cu_seqlens`; every op skips them); a batch with more documents than that
runs eagerly instead, with one warning.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch
from torch import nn

from rodimus.ops.packing import pad_cu_seqlens

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


class _Captured(nn.Module):
    """The module make_graphed_callables captures: its parameters are the model's."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, names: tuple[str, ...], bf16: bool):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.names = names
        self.bf16 = bf16

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        # autocast's weight-cast cache must be off under capture (torch.cuda.make_graphed_callables)
        bf16 = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        with bf16 if self.bf16 else contextlib.nullcontext():
            return self.loss_fn(self.model, dict(zip(self.names, tensors, strict=True)))


class GraphedLoss:
    """``loss = graphed(inputs)``; ``loss.backward()`` replays the backward graph.

    Captured lazily on the first batch (after make_graphed_callables' warm-up iterations, which leave
    ``.grad`` untouched). Gradients are handed to autograd from static buffers, so the parameters' ``.grad``
    must already exist and be zeroed in place (``zero_grad(set_to_none=False)``): a ``.grad`` that
    autograd set to such a buffer would be overwritten by the next micro-batch's replay.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, bf16: bool, max_docs: int, warmup: int = 3):
        if max_docs < 1:
            raise ValueError(f"cuda_graph_max_docs must be an int >= 1, got {max_docs!r}")
        self.model, self.loss_fn, self.bf16 = model, loss_fn, bf16
        self.max_docs, self.warmup = max_docs, warmup
        self._fn: nn.Module | None = None
        self._shapes: tuple | None = None
        self._warned = False

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The loss through the graphs, or None when this batch does not fit them (the caller runs eagerly)."""
        if "cu_seqlens" in inputs:
            cu = pad_cu_seqlens(inputs["cu_seqlens"], self.max_docs)
            if cu is None:
                return self._skip(f"{inputs['cu_seqlens'].numel() - 1} documents > cuda_graph_max_docs={self.max_docs}")
            inputs = {**inputs, "cu_seqlens": cu}
        names = tuple(sorted(inputs))
        tensors = tuple(inputs[n] for n in names)
        shapes = tuple((n, tuple(t.shape), t.dtype) for n, t in zip(names, tensors, strict=True))
        if self._fn is None:
            self._capture(names, tensors)
            self._shapes = shapes
        elif shapes != self._shapes:
            return self._skip(f"batch shapes {shapes} differ from the captured {self._shapes}")
        return self._fn(*tensors)

    def _capture(self, names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> None:
        for p in self.model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        module = _Captured(self.model, self.loss_fn, names, self.bf16)
        self._fn = torch.cuda.make_graphed_callables(module, tensors, num_warmup_iters=self.warmup)
        # the eager warm-up iterations' activations stay cached beside the graphs' private pool: give them back
        torch.cuda.empty_cache()

    def _skip(self, why: str) -> None:
        if not self._warned:
            warnings.warn(f"CUDA graphs: running eagerly where {why}", stacklevel=3)
            self._warned = True
        return None
