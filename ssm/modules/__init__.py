"""Mixers and blocks: Mamba1 (alias Mamba), Mamba2, MHA, GatedMLP, Block."""
from ssm.modules.attention import MHA
from ssm.modules.block import Block
from ssm.modules.mamba1 import Mamba1
from ssm.modules.mamba2 import Mamba2
from ssm.modules.mlp import GatedMLP

Mamba = Mamba1

__all__ = ["Mamba", "Mamba1", "Mamba2", "MHA", "GatedMLP", "Block"]
