"""nn.Modules that hold parameters and call the ops."""

from rodimus.layers.attention import SlidingWindowSharedKeyAttention
from rodimus.layers.ffn import GatedMLP
from rodimus.layers.mixer import RodimusInnerMixer, RodimusMixer
from rodimus.layers.norm import GatedRMSNorm, RMSNorm

__all__ = [
    "GatedMLP",
    "GatedRMSNorm",
    "RMSNorm",
    "RodimusInnerMixer",
    "RodimusMixer",
    "SlidingWindowSharedKeyAttention",
]
