"""ncu driver for the batch decode conv kernel (session 8, decode64b): two calls at each b64 model shape of Mamba-2
(130m: 1792 channels, 1.3b: 4352), and of narrow_linear at Mamba-1's 130m x_proj shape and a 2048 x 128 one. Times nothing."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import torch  # noqa: E402

from ssm.ops import batch_decode as bd  # noqa: E402

dev, bf = torch.device("cuda"), torch.bfloat16
with torch.inference_mode():
    for D in (1792, 4352):
        x = torch.randn(64, 2 * D, device=dev, dtype=bf)[:, :D]
        w, b = torch.randn(D, 4, device=dev), torch.randn(D, device=dev)
        for _ in range(2):
            bd.conv_update_cl(x, torch.randn(64, 4, D, device=dev, dtype=bf).transpose(1, 2), w, b, "silu")
    for K, R in ((1536, 80), (2048, 128)):  # Mamba-1's x_proj at 130m, a 2048-wide one
        x = torch.randn(64, K, device=dev, dtype=bf)
        for _ in range(2):
            bd.narrow_linear(x, torch.randn(R, K, device=dev, dtype=bf))
    torch.cuda.synchronize()
