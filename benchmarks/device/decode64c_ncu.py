"""ncu driver for batch_decode.linear_conv's kernel (session 9, decode64c): two calls at mamba-130m's b64 in_proj +
conv update shape (64 x 768 -> 3072, conv on the first 1536 columns; the whole K in shared memory) alternating with
two with the norm folded in (norm_linear_conv), two at
mamba-1.4b's (64 x 2048 -> 8192, conv on 4096; K in chunks of 256). Times nothing."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import torch  # noqa: E402

from ssm.ops import batch_decode as bd  # noqa: E402

dev, bf = torch.device("cuda"), torch.bfloat16
with torch.inference_mode():
    for K, N, C in ((768, 3072, 1536), (2048, 8192, 4096)):
        x = torch.randn(64, K, device=dev, dtype=bf)
        conv = (torch.randn(64, C, 4, device=dev, dtype=bf), torch.randn(C, 4, device=dev),
                torch.randn(C, device=dev), "silu")
        for _ in range(2):
            w = torch.randn(N, K, device=dev, dtype=bf) * K ** -0.5
            bd.linear_conv(x, w, None, conv)
            if K <= 1152:  # with the norm folded in
                bd.norm_linear_conv(x, torch.randn(64, K, device=dev), torch.randn(K, device=dev), None, w, None, conv)
    torch.cuda.synchronize()
