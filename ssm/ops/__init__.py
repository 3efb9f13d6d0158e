"""Public ops: the names of the design (``dw_causal_conv``, ...) and those of ``mamba_ssm``."""
from ssm.ops.conv import causal_conv1d_fn, dw_causal_conv
from ssm.ops.ssd import mamba_chunk_scan_combined, ssd_chunk_scan, ssd_chunk_scan_combined_ref
from ssm.ops.ssd_split import mamba_split_conv1d_scan_combined, mamba_split_conv1d_scan_ref

__all__ = ["dw_causal_conv", "causal_conv1d_fn",
           "ssd_chunk_scan", "mamba_chunk_scan_combined", "ssd_chunk_scan_combined_ref",
           "mamba_split_conv1d_scan_combined", "mamba_split_conv1d_scan_ref"]
