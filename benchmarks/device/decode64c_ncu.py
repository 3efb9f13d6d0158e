"""ncu driver for batch_decode.conv_xproj's kernel (session 9, decode64c): two calls at mamba-130m's b64 shape
(conv update of 1536 channels, x_proj 1536 -> 80). Times nothing."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import torch  # noqa: E402

from ssm.ops import batch_decode as bd  # noqa: E402

dev, bf = torch.device("cuda"), torch.bfloat16
with torch.inference_mode():
    x = torch.randn(64, 3072, device=dev, dtype=bf)[:, :1536]
    state, w, b = torch.randn(64, 1536, 4, device=dev, dtype=bf), torch.randn(1536, 4, device=dev), None
    for _ in range(2):
        bd.conv_xproj(x, state, w, b, "silu", torch.randn(80, 1536, device=dev, dtype=bf) * 0.02)
    torch.cuda.synchronize()
