"""The Rodimus mixer: short conv, DDTS recurrence and the GLU-shaped wrapper around it.

Parameter names follow the official checkpoints (``fc``, ``inner_mixer.short_conv.conv1d``,
``inner_mixer.in_proj``, ``ch_gate_proj``, ``mem_gate_proj``, ``residual_weight``, ``act_norm``,
``out_proj``) so their weights load without renaming.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging

from rodimus.layers.linear import plain_linear, split_linear, split_project
from rodimus.layers.norm import GatedRMSNorm
from rodimus.layers.recompute import RebuildSaved, low_rank_gate
from rodimus.ops.dispatch import get_op, resolve_backend
from rodimus.ops.packing import reuse_derived

logger = logging.get_logger(__name__)


class ShortConvolution(nn.Module):
    """Holds the depthwise kernel [D, 1, W] + bias; the math is :func:`rodimus.ops.short_conv`."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.conv1d = nn.Conv1d(dim, dim, width, groups=dim, bias=True)

    def forward(self, x, *, backend: str, initial_state=None, cu_seqlens=None, output_final_state: bool = True,
                pass_input: bool = False):
        op = get_op("short_conv", backend)
        return op(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, initial_state=initial_state,
                  cu_seqlens=cu_seqlens, activation="silu", output_final_state=output_final_state,
                  pass_input=pass_input)


class RodimusInnerMixer(nn.Module):
    """x -> (o, x') with o = DDTS(q, k, u; g, tau) and x' = silu(conv(x)).

    The paper's o_t also has the skip term D * x' (``residual_weight``): :class:`RodimusMixer`'s gated
    norm adds it, fused into the same pass over the rows.
    """

    def __init__(
        self, d_inner: int, mem_size: int, low_rank: int, d_conv: int, eps: float, layer_idx: int,
        kernel_backend: str = "auto", chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.d_inner, self.mem_size, self.eps = d_inner, mem_size, eps
        self.layer_idx = layer_idx
        self.kernel_backend = kernel_backend
        self.chunk_size = chunk_size
        self.short_conv = ShortConvolution(d_inner, d_conv)
        self.in_proj = nn.Linear(d_inner, 2 * mem_size, bias=False)  # [q; k]
        self.ch_gate_proj = nn.Sequential(
            nn.Linear(d_inner, low_rank, bias=False), nn.Linear(low_rank, d_inner, bias=True)
        )
        self.mem_gate_proj = nn.Linear(d_inner, 2 * mem_size, bias=True)  # [g; tau] pre-activations
        self.residual_weight = nn.Parameter(torch.ones(d_inner))
        # roles read by RodimusPreTrainedModel._init_weights
        for lin in (self.in_proj, *self.ch_gate_proj, self.mem_gate_proj):
            lin.init_role = "xavier"
        self.mem_gate_proj.init_role = "gate"

    def _conv_rebuild(self, x, backend, conv_state, cu_seqlens) -> Callable[[], torch.Tensor]:
        """x' again from the same inputs, in the forward's packing indices, without the final state."""
        scope = reuse_derived()

        def rebuild() -> torch.Tensor:
            with scope():
                return self.short_conv(x, backend=backend, initial_state=conv_state, cu_seqlens=cu_seqlens,
                                       output_final_state=False)[0]

        return rebuild

    def _projections(self, xc: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, the float32 gate pre-activations [g; tau] from x', and x' for its other consumer (the
        skip term).

        Under autocast the gate GEMM runs in the autocast dtype anyway, so one GEMM serves q, k, g and
        tau (x' read once; its backward adds the projections' share of dx' into the skip term's); the
        gate bias is added in float32. Otherwise the gate GEMM is float32, as
        the reference computes it. A wrapped gate projection (an adapter, a quantised linear) is called
        as it is, in its own dtype: reading its weight directly would skip its extra work.
        """
        n = self.mem_size
        gate_plain = plain_linear(self.mem_gate_proj, allow_bias=True)
        if torch.is_autocast_enabled(xc.device.type) and gate_plain and plain_linear(self.in_proj):
            w = torch.cat([self.in_proj.weight, self.mem_gate_proj.weight])
            q, k, gates, xc = split_linear(xc, w, [n, n, 2 * n], pass_input=True)
            gates = gates.float() + self.mem_gate_proj.bias.float()
        else:
            q, k = self.in_proj(xc).split(n, dim=-1)
            if gate_plain:
                w, b = self.mem_gate_proj.weight, self.mem_gate_proj.bias
                gates = F.linear(xc.float(), w.float(), b.float())
            else:
                gates = self.mem_gate_proj(xc).float()
        g_pre, tau_pre = gates.split(n, dim=-1)
        return q, k, g_pre, tau_pre, xc

    def _input_gate(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        """u = sigmoid(W_b W_a x + b) * x. In training the [rows, d_inner] pre-activation is rebuilt in
        backward from the rank-r W_a x rather than kept: x is kept anyway, so u costs no extra activation."""
        return low_rank_gate(x, self.ch_gate_proj[0], self.ch_gate_proj[1], backend)

    def forward(
        self, x: torch.Tensor, cache=None, cu_seqlens: torch.Tensor | None = None, rebuild: RebuildSaved | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``rebuild``: the caller's block in which x' is rebuilt in backward rather than kept."""
        B, T, _ = x.shape
        backend = resolve_backend(self.kernel_backend, x.device.type)
        conv_state = rec_state = None
        if cache is not None:
            conv_state = cache.get_conv_state(self.layer_idx)
            rec_state = cache.get_recurrent_state(self.layer_idx)
        # x's other consumer, the input gate, reads it through the conv: its gradient is added inside the
        # conv's backward kernel instead of by autograd in a separate pass over [rows, d_inner]
        xc, conv_final, x = self.short_conv(x, backend=backend, initial_state=conv_state, cu_seqlens=cu_seqlens,
                                            output_final_state=cache is not None, pass_input=True)
        if rebuild is not None:
            rebuild.register(xc, self._conv_rebuild(x, backend, conv_state, cu_seqlens))
        n = self.mem_size
        q, k, g_pre, tau_pre, xc = self._projections(xc)
        q, k, g_pre, tau_pre = (t.reshape(B, T, 1, n) for t in (q, k, g_pre, tau_pre))
        u = self._input_gate(x, backend)
        # without a cache nothing reads the final state: the fused kernels then neither store nor keep it
        kwargs = dict(scale=n**-0.5, eps=self.eps, initial_state=rec_state, cu_seqlens=cu_seqlens,
                      output_final_state=cache is not None)
        if backend == "naive":
            op = get_op("ddts", "naive")
        elif T == 1 and backend != "triton":
            op = get_op("ddts", "recurrent")
        else:
            op = get_op("ddts", backend)
            kwargs["chunk_size"] = self.chunk_size
            if backend == "triton" and self.chunk_size is not None:
                _warn_slow_kernel_chunk(self.chunk_size)
        o, state = op(q, k, u.view(B, T, 1, self.d_inner), g_pre, tau_pre, **kwargs)
        if cache is not None:
            cache.update_conv_state(conv_final, self.layer_idx, conv_kernel_size=conv_final.shape[-1])
            cache.update_recurrent_state(state, self.layer_idx)
        return o.squeeze(2), xc


def _warn_slow_kernel_chunk(chunk: int) -> None:
    from rodimus.ops.triton.ddts import DEFAULT_CHUNK

    if chunk != DEFAULT_CHUNK:  # folders saved by early versions carry chunk_size 32 explicitly
        logger.warning_once(
            f"config.chunk_size={chunk} runs the Triton DDTS kernels at chunk {chunk}; their fastest is "
            f"{DEFAULT_CHUNK} (H200: ~1.45x faster fwd+bwd than 32). Set chunk_size to None (or remove it "
            "from config.json) to let each backend take its own."
        )


class RodimusMixer(nn.Module):
    """h -> out_proj(RMSNorm((o + D * x') * silu(gate))) with [x; gate] = fc(h), (o, x') = inner(x)."""

    def __init__(
        self, d_model: int, d_inner: int, mem_size: int, low_rank: int, d_conv: int, key_eps: float,
        norm_eps: float, layer_idx: int, kernel_backend: str = "auto", chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.d_inner = d_inner
        self.fc = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.inner_mixer = RodimusInnerMixer(
            d_inner, mem_size, low_rank, d_conv, key_eps, layer_idx, kernel_backend, chunk_size
        )
        self.act_norm = GatedRMSNorm(d_inner, eps=norm_eps, kernel_backend=kernel_backend)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.out_proj.init_role = "out"

    def forward(
        self,
        h: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        cache=None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``token_mask`` [B, T] zeroes padded positions' inputs so they leave no trace in the state."""
        x, gate = split_project(self.fc, h, [self.d_inner, self.d_inner])
        if token_mask is not None:
            x = x * token_mask[..., None].to(x.dtype)
        with RebuildSaved() as rebuild:  # x' is kept by two consumers: rebuild it in backward instead
            o, xc = self.inner_mixer(x, cache=cache, cu_seqlens=cu_seqlens, rebuild=rebuild)
            skip_w = self.inner_mixer.residual_weight
            return self.act_norm.project(o, gate, self.out_proj, skip_x=xc, skip_weight=skip_w)
