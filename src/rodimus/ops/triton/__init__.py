"""Triton kernels for the Rodimus ops; importing this registers them as the ``"triton"`` backend.

Raises ImportError when triton is missing, which ``rodimus.ops.dispatch.triton_available`` reads as
"not available". Without CUDA the kernels run under Triton's interpreter (slow; for tests).
"""

from rodimus.ops.triton import _common  # noqa: F401  (sets TRITON_INTERPRET before any kernel is built)
from rodimus.ops.triton.cross_entropy import softmax_xent_grad_triton_
from rodimus.ops.triton.ddts import ddts_decode_, ddts_triton
from rodimus.ops.triton.gating import (
    gate_mul_backward_triton,
    gate_mul_triton,
    low_rank_gate_mul_backward_triton,
    low_rank_gate_mul_triton,
)
from rodimus.ops.triton.norm import (
    gated_rms_norm_backward_triton,
    gated_rms_norm_triton,
    rms_norm_pass_triton,
    rms_norm_triton,
)
from rodimus.ops.triton.rotary import rotary_triton
from rodimus.ops.triton.short_conv import short_conv_triton
from rodimus.ops.triton.swska import swska_triton

__all__ = [
    "ddts_decode_",
    "ddts_triton",
    "gate_mul_backward_triton",
    "gate_mul_triton",
    "gated_rms_norm_backward_triton",
    "gated_rms_norm_triton",
    "low_rank_gate_mul_backward_triton",
    "low_rank_gate_mul_triton",
    "rms_norm_pass_triton",
    "rms_norm_triton",
    "rotary_triton",
    "short_conv_triton",
    "softmax_xent_grad_triton_",
    "swska_triton",
]


def _register() -> None:
    from rodimus.ops.dispatch import REGISTRY

    REGISTRY["ddts"]["triton"] = ddts_triton
    REGISTRY["swska"]["triton"] = swska_triton
    REGISTRY["short_conv"]["triton"] = short_conv_triton
    REGISTRY["gated_norm"]["triton"] = gated_rms_norm_triton
    REGISTRY["gated_norm_backward"]["triton"] = gated_rms_norm_backward_triton
    REGISTRY["rms_norm"]["triton"] = rms_norm_triton
    REGISTRY["rms_norm_pass"]["triton"] = rms_norm_pass_triton
    REGISTRY["gate_mul"]["triton"] = gate_mul_triton
    REGISTRY["gate_mul_backward"]["triton"] = gate_mul_backward_triton
    REGISTRY["low_rank_gate_mul"]["triton"] = low_rank_gate_mul_triton
    REGISTRY["low_rank_gate_mul_backward"]["triton"] = low_rank_gate_mul_backward_triton
    REGISTRY["rotary"]["triton"] = rotary_triton
    REGISTRY["xent_grad_"]["triton"] = softmax_xent_grad_triton_


_register()
