"""Runs every CUDA kernel family once at small shapes, for compute-sanitizer (memcheck, racecheck):
small Mamba-1 and Mamba-2 models (prefill, forward+backward, decode with the fused step kernels),
then the ops the models do not reach (selective scan with N > 16, f32 and aligned rows, SSD in f32 with states)."""
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import ssm.ops as ops  # noqa: E402
from ssm.models.config import MambaConfig  # noqa: E402
from ssm.models.lm import MambaLMHeadModel  # noqa: E402

DEV = torch.device(os.environ.get("SANITIZE_DEVICE", "cuda"))
torch.manual_seed(0)
for layer in ("Mamba1", "Mamba2"):
    cfg = MambaConfig(d_model=128, n_layer=2, vocab_size=256,
                      ssm_cfg={"layer": layer, **({"headdim": 32, "chunk_size": 64} if layer == "Mamba2" else {})})
    model = MambaLMHeadModel(cfg, device=DEV, dtype=torch.bfloat16)
    ids = torch.randint(0, 256, (2, 97), device=DEV)
    loss = F.cross_entropy(model(ids[:, :-1]).logits.flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    model.eval()
    with torch.inference_mode():
        model.generate(ids[:, :8], max_length=12)
        model.generate(ids[:1, :8], max_length=12)
    print(layer, "model done", flush=True)
# selective scan with gradients: N 64 (the older kernels), f32 N 16, and 16-byte aligned rows of L 200 (the
# rows kernel, bf16 and f32; partial step groups and channel blocks); then the forced kernel forms (row forward with
# two channels per thread, backward with two state entries per pass with two and four warps, N 16 and 13)
FORMS = [{}] * 4 + [{"SSM_SCAN_ROWS": "2", "SSM_SCAN_BWD_WARPS": "2"}, {"SSM_SCAN_BWD_ILP": "1", "SSM_SCAN_BWD_WARPS": "2"},
                    {"SSM_SCAN_BWD_WARPS": "4"}]
for form, (N, dt, L) in zip(FORMS, ((64, torch.bfloat16, 77), (16, torch.float32, 77), (16, torch.bfloat16, 200),
                                    (16, torch.float32, 200), (16, torch.bfloat16, 200), (16, torch.bfloat16, 200),
                                    (13, torch.bfloat16, 77))):
    os.environ.update(form)
    u, d, z = (torch.randn(2, 96, L, device=DEV, dtype=dt) for _ in range(3))
    lv = [t.requires_grad_() for t in (u, d * 0.5, -torch.rand(96, N, device=DEV), torch.randn(2, 1, N, L, device=DEV, dtype=dt),
                                       torch.randn(2, 1, N, L, device=DEV, dtype=dt), torch.randn(96, device=DEV), z)]
    y = ops.selective_scan(*lv, None, True)
    y.sum().backward()
    for k in form:
        os.environ.pop(k)
# SSD f32 with initial and final states
x = torch.randn(2, 133, 4, 32, device=DEV, requires_grad=True)
dt = (torch.rand(2, 133, 4, device=DEV) * 0.5).requires_grad_()
Bm, Cm = (torch.randn(2, 133, 2, 16, device=DEV, requires_grad=True) for _ in range(2))
h0 = torch.randn(2, 4, 32, 16, device=DEV, requires_grad=True)
y, fin = ops.ssd_chunk_scan(x, dt, -torch.rand(4, device=DEV) - 0.1, Bm, Cm, 64, D=torch.randn(4, device=DEV),
                            initial_states=h0, return_final_states=True)
(y.sum() + fin.sum()).backward()
if DEV.type == "cuda":
    torch.cuda.synchronize()
print("sanitize driver done")
