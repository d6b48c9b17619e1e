"""Which implementation of each op runs: chosen by name, by config, or by RODIMUS_KERNELS.

One registry per op; every entry has the op's one signature. ``"auto"`` picks the fastest form
available for the tensors' device. Set ``RODIMUS_KERNELS=torch`` (or ``triton``) to force a path
while debugging; it overrides the config.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from rodimus.ops.ddts import ddts_chunk, ddts_naive, ddts_recurrent
from rodimus.ops.gating import gate_mul, gate_mul_backward, low_rank_gate_mul, low_rank_gate_mul_backward
from rodimus.ops.norm import gated_rms_norm, gated_rms_norm_backward, rms_norm, rms_norm_pass
from rodimus.ops.rotary import rotary
from rodimus.ops.short_conv import short_conv, short_conv_naive
from rodimus.ops.softmax_xent import softmax_xent_grad_
from rodimus.ops.swska import swska_blocked, swska_naive

BACKENDS = ("auto", "torch", "triton", "naive")

# op name -> backend -> callable; the triton entries are added by rodimus.ops.triton when importable
REGISTRY: dict[str, dict[str, Callable]] = {
    "ddts": {"naive": ddts_naive, "torch": ddts_chunk, "recurrent": ddts_recurrent},
    "short_conv": {"naive": short_conv_naive, "torch": short_conv},
    "gated_norm": {"naive": gated_rms_norm, "torch": gated_rms_norm},
    "gated_norm_backward": {"naive": gated_rms_norm_backward, "torch": gated_rms_norm_backward},
    "rms_norm": {"naive": rms_norm, "torch": rms_norm},
    "rms_norm_pass": {"naive": rms_norm_pass, "torch": rms_norm_pass},
    "gate_mul": {"naive": gate_mul, "torch": gate_mul},
    "gate_mul_backward": {"naive": gate_mul_backward, "torch": gate_mul_backward},
    "low_rank_gate_mul": {"naive": low_rank_gate_mul, "torch": low_rank_gate_mul},
    "low_rank_gate_mul_backward": {"naive": low_rank_gate_mul_backward, "torch": low_rank_gate_mul_backward},
    "rotary": {"naive": rotary, "torch": rotary},
    "swska": {"naive": swska_naive, "torch": swska_blocked},
    "xent_grad_": {"naive": softmax_xent_grad_, "torch": softmax_xent_grad_},
}


def check_backend(name: str, field: str = "kernel_backend") -> str:
    if name not in BACKENDS:
        raise ValueError(f"{field} must be one of {BACKENDS}, got {name!r}")
    return name


def resolve_backend(configured: str, device_type: str) -> str:
    """The backend to use on ``device_type``: env var first, then config, then the device default."""
    name = check_backend(os.environ.get("RODIMUS_KERNELS", configured) or "auto", "RODIMUS_KERNELS")
    if name == "auto":
        return "triton" if device_type == "cuda" and triton_available() else "torch"
    if name == "triton" and not triton_available():
        raise ValueError("kernel backend 'triton' was requested but triton is not installed (pip install triton)")
    return name


def get_op(op: str, backend: str) -> Callable:
    """The implementation of ``op`` for a resolved backend, falling back to torch where no kernel exists."""
    table = REGISTRY[op]
    return table.get(backend, table["torch"])


def triton_available() -> bool:
    try:
        import rodimus.ops.triton  # noqa: F401  (registers the kernels)
    except ImportError:
        return False
    return "triton" in REGISTRY["ddts"]
