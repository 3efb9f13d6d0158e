"""``ssm train`` under ``torchrun --nproc-per-node 2`` on the CPU (gloo): one DDP step, then a
resume under FSDP2 to step 2, ends with the weights of one process training 2 steps on the same
global batches; the run writes one checkpoint."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from ssm.models.lm import MambaLMHeadModel

REPO = Path(__file__).resolve().parents[2]
TEXT = "".join(f"def g{i}(y):\n    return y - {i} * {i % 5}\n\n" for i in range(300))
TINY = ["--layer", "mamba1", "--d-model", "16", "--n-layer", "2", "--batch-size", "4", "--seq-len", "24",
        "--eval-every", "0", "--log-every", "1", "--warmup", "1", "--device", "cpu"]


def run(args, nproc=0):
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    env.pop("SSM_DEBUG", None)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] if nproc else []
    result = subprocess.run([sys.executable, *launcher, "-m", "ssm", "train", *map(str, args)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def test_torchrun_ddp_then_fsdp_resume_equals_one_process(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "text.py").write_text(TEXT)
    data = ["--data", tmp_path / "data"]
    run([*data, "--out", tmp_path / "one", "--steps", 2, *TINY])
    log = run([*data, "--out", tmp_path / "dp", "--steps", 1, *TINY], nproc=2)
    assert "2 ranks (DDP)" in log and log.count("step 1/1") == 1
    log = run([*data, "--out", tmp_path / "dp", "--steps", 2, "--resume", "--fsdp", *TINY], nproc=2)
    assert "2 ranks (FSDP2)" in log and "step 2/2" in log and "step 1/2" not in log

    files = sorted(p.name for p in (tmp_path / "dp").iterdir())
    assert files == ["config.json", "model.safetensors", "train_args.json", "train_state.pt"], files
    assert torch.load(tmp_path / "dp" / "train_state.pt", weights_only=True)["step"] == 2
    one = MambaLMHeadModel.from_pretrained(tmp_path / "one").state_dict()
    dp = MambaLMHeadModel.from_pretrained(tmp_path / "dp").state_dict()
    torch.manual_seed(0)  # ssm train's --seed: the initial weights
    start = MambaLMHeadModel(MambaLMHeadModel.from_pretrained(tmp_path / "one").config).state_dict()
    assert one.keys() == dp.keys()
    moved = 0
    for name in one:
        torch.testing.assert_close(dp[name], one[name], rtol=1e-4, atol=1e-6, msg=name)
        moved += not torch.equal(one[name], start[name])
    assert moved > len(one) // 2  # the comparison is about trained weights
