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


def test_optimizer_state_by_index_or_by_name_resumes_the_same():
    """Checkpoints written before this change keep the optimizer state keyed by index."""
    from ssm.cli import distributed
    from ssm.models.config import MambaConfig

    def build():
        torch.manual_seed(0)
        model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=64, ssm_cfg={"layer": "Mamba1"}))
        return model, torch.optim.AdamW(model.parameters())
    model, opt = build()
    model(torch.randint(0, 64, (1, 8))).logits.square().mean().backward()
    opt.step()
    for saved in (opt.state_dict(), distributed.optimizer_state(model, opt)):
        fresh_model, fresh_opt = build()
        distributed.load_optimizer_state(fresh_model, fresh_opt, saved)
        got = [s["exp_avg_sq"] for s in fresh_opt.state.values()]
        want = [s["exp_avg_sq"] for s in opt.state.values()]
        assert len(got) == len(want) > 5
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
