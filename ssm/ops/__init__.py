"""Public ops: the names of the design (``dw_causal_conv``, ...) and those of ``mamba_ssm``."""
from ssm.ops.conv import causal_conv1d_fn, dw_causal_conv
from ssm.ops.conv import causal_conv1d_update, dw_causal_conv_update
from ssm.ops.gated_norm import LayerNormGated, RMSNormGated, gated_rms_norm, layernorm_fn, rmsnorm_fn
from ssm.ops.mamba_inner import mamba_inner_fn, mamba_inner_ref
from ssm.ops.norm import RMSNorm, fused_layer_norm, layer_norm_fn, layer_norm_ref, rms_norm_fn, rms_norm_ref
from ssm.ops.selective_scan import selective_scan, selective_scan_fn, selective_scan_ref
from ssm.ops.ssd import mamba_chunk_scan_combined, ssd_chunk_scan, ssd_chunk_scan_combined_ref
from ssm.ops.ssd_split import mamba_split_conv1d_scan_combined, mamba_split_conv1d_scan_ref
from ssm.ops.state_step import selective_state_step, selective_state_update, selective_state_update_ref

__all__ = [
    "LayerNormGated",
    "RMSNorm",
    "RMSNormGated",
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "dw_causal_conv",
    "dw_causal_conv_update",
    "fused_layer_norm",
    "gated_rms_norm",
    "layer_norm_fn",
    "layer_norm_ref",
    "layernorm_fn",
    "mamba_chunk_scan_combined",
    "mamba_inner_fn",
    "mamba_inner_ref",
    "mamba_split_conv1d_scan_combined",
    "mamba_split_conv1d_scan_ref",
    "rms_norm_fn",
    "rms_norm_ref",
    "rmsnorm_fn",
    "selective_scan",
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_state_step",
    "selective_state_update",
    "selective_state_update_ref",
    "ssd_chunk_scan",
    "ssd_chunk_scan_combined_ref",
]
