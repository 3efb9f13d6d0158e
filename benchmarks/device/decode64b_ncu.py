"""ncu driver for the batch decode conv kernels (session 8, decode64b): a few calls of each at the b64 model shapes
(mamba2-130m channels-last conv update; mamba-130m and mamba-1.4b conv + x_proj). Times nothing."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import torch  # noqa: E402

from ssm.ops import batch_decode as bd  # noqa: E402

bd.ENABLED = True
dev, bf = torch.device("cuda"), torch.bfloat16
with torch.inference_mode():
    for D, R in ((0, 0), (1536, 80), (4096, 160)):
        Dc = D or 1792
        x = torch.randn(64, 2 * Dc, device=dev, dtype=bf)[:, :Dc]
        w, b = torch.randn(Dc, 4, device=dev), torch.randn(Dc, device=dev)
        for _ in range(2):
            if D == 0:
                bd.conv_update_cl(x, torch.randn(64, 4, Dc, device=dev, dtype=bf).transpose(1, 2), w, b, "silu")
            else:
                bd.conv_xproj(x, torch.randn(64, D, 4, device=dev, dtype=bf), w, b, "silu",
                              torch.randn(R, D, device=dev, dtype=bf))
    torch.cuda.synchronize()
