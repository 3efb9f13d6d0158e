"""Language models: MambaConfig, MambaLMHeadModel (and its MixerModel backbone)."""
from ssm.models.config import MambaConfig
from ssm.models.lm import MambaLMHeadModel, MixerModel, create_block

__all__ = ["MambaConfig", "MambaLMHeadModel", "MixerModel", "create_block"]
