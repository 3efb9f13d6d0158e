"""Public ops: the names of the design (``dw_causal_conv``, ...) and those of ``mamba_ssm``."""
from ssm.ops.conv import causal_conv1d_fn, dw_causal_conv

__all__ = ["dw_causal_conv", "causal_conv1d_fn"]
