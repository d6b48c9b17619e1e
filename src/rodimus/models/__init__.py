"""Config, model, cache helpers and checkpoint conversion."""

from rodimus.models.configuration_rodimus import RodimusConfig
from rodimus.models.modeling_rodimus import RodimusForCausalLM, RodimusModel, RodimusPreTrainedModel

__all__ = ["RodimusConfig", "RodimusForCausalLM", "RodimusModel", "RodimusPreTrainedModel"]
