"""ncu driver for batch_decode.linear_conv's kernel (session 9, decode64c): two calls at mamba-130m's b64 in_proj +
conv update shape (64 x 768 -> 3072, conv on the first 1536 columns), two without the conv. Times nothing."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import torch  # noqa: E402

from ssm.ops import batch_decode as bd  # noqa: E402

dev, bf = torch.device("cuda"), torch.bfloat16
with torch.inference_mode():
    x = torch.randn(64, 768, device=dev, dtype=bf)
    conv = (torch.randn(64, 1536, 4, device=dev, dtype=bf), torch.randn(1536, 4, device=dev),
            torch.randn(1536, device=dev), "silu")
    for c in (conv, conv, None, None):
        bd.linear_conv(x, torch.randn(3072, 768, device=dev, dtype=bf), None, c)
    torch.cuda.synchronize()
