"""Public ops: the names of the design (``dw_causal_conv``, ...) and those of ``mamba_ssm``."""
from ssm.ops.conv import causal_conv1d_fn, dw_causal_conv

__all__ = ["dw_causal_conv", "causal_conv1d_fn"]
from ssm.ops.conv import causal_conv1d_update, dw_causal_conv_update
from ssm.ops.gated_norm import LayerNormGated, RMSNormGated, gated_rms_norm, layernorm_fn, rmsnorm_fn
from ssm.ops.norm import RMSNorm, fused_layer_norm, layer_norm_fn, layer_norm_ref, rms_norm_fn, rms_norm_ref

__all__ += ["dw_causal_conv_update", "causal_conv1d_update", "fused_layer_norm", "layer_norm_fn", "rms_norm_fn",
            "layer_norm_ref", "rms_norm_ref", "RMSNorm", "gated_rms_norm", "layernorm_fn", "rmsnorm_fn",
            "RMSNormGated", "LayerNormGated"]
