"""rodimus: Rodimus and Rodimus+ language models, Hugging Face-native and runnable on CPU.

Importing the package registers the ``rodimus`` model type with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(folder)`` works without ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from rodimus.models import RodimusConfig, RodimusForCausalLM, RodimusModel

AutoConfig.register("rodimus", RodimusConfig, exist_ok=True)
AutoModel.register(RodimusConfig, RodimusModel, exist_ok=True)
AutoModelForCausalLM.register(RodimusConfig, RodimusForCausalLM, exist_ok=True)

__version__ = "0.1.0"
__all__ = ["RodimusConfig", "RodimusForCausalLM", "RodimusModel", "__version__"]
