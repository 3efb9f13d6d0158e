"""The command line end to end, as a user runs it (subprocesses), on tiny models: train, resume,
generate, eval, bench; and its error paths (one line on stderr, non-zero exit, no traceback)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssm.cli.data import ByteTokenizer
from ssm.cli.streamer import TextStreamer

REPO = Path(__file__).resolve().parents[2]
TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}  # é ü {i}\n\n" for i in range(400))
TINY = ["--layer", "mamba1", "--d-model", "16", "--n-layer", "1", "--batch-size", "2", "--seq-len", "32",
        "--eval-tokens", "256", "--log-every", "1"]


def ssm_cli(*args, stdin=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    env.pop("SSM_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ssm", *map(str, args)], cwd=REPO, env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, code=1):
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 1-layer byte-level model trained 2 steps, then resumed to 3 (checks the resume)."""
    root = tmp_path_factory.mktemp("cli")
    (root / "data").mkdir()
    (root / "data" / "text.py").write_text(TEXT)
    out = root / "ck"
    first = ssm_cli("train", "--data", root / "data", "--out", out, "--steps", 2, "--eval-every", 2, *TINY)
    assert first.returncode == 0, first.stderr
    assert "held-out loss" in first.stderr and "tok/s" in first.stderr and "eta" in first.stderr
    resumed = ssm_cli("train", "--data", root / "data", "--out", out, "--steps", 3, "--resume", *TINY)
    assert resumed.returncode == 0, resumed.stderr
    assert "step 3/3" in resumed.stderr and "step 1/3" not in resumed.stderr
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 3
    return root


def test_train_writes_a_loadable_checkpoint(checkpoint):
    from ssm.models.lm import MambaLMHeadModel
    model = MambaLMHeadModel.from_pretrained(checkpoint / "ck")
    assert model.config.vocab_size == 256 and model.config.d_model == 16
    assert json.loads((checkpoint / "ck" / "train_args.json").read_text())["steps"] == 3


def test_generate_streams_and_reports_rates(checkpoint):
    result = ssm_cli("generate", "--model", checkpoint / "ck", "--prompt", "def f(", "--max-new-tokens", 6,
                     "--batch", 2, "--seed", 1)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert result.stdout.startswith("def f(") and "--- sample 2 ---" in result.stdout
    assert "prompt" in last and "generation" in last and "backend" in last and "device cpu" in last


def test_builtin_model_generates_from_stdin():
    result = ssm_cli("generate", "--max-new-tokens", 8, "--top-k", 1, stdin="def fibonacci(n):")
    assert result.returncode == 0, result.stderr
    # greedy after a def line: the next line is indented
    assert result.stdout.startswith("def fibonacci(n):\n    "), result.stdout


def test_eval_prints_bits_per_byte(checkpoint):
    result = ssm_cli("eval", "--model", checkpoint / "ck", "--data", checkpoint / "data", "--seq-len", 64,
                     "--max-tokens", 500)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("bits_per_byte=") and 0 < float(last.split("=")[1]) < 9


def test_bench_reports_a_failing_script_and_goes_on(tmp_path):
    (tmp_path / "bench_ok.py").write_text(
        "import argparse\ndef main():\n    p = argparse.ArgumentParser(); p.add_argument('--quick', action='store_true')\n"
        "    print('quick' if p.parse_args().quick else 'full')\n")
    (tmp_path / "bench_bad.py").write_text("def main():\n    raise RuntimeError('broken on purpose')\n")
    result = ssm_cli("bench", "--quick", "--dir", tmp_path, "--results", tmp_path / "results")
    assert result.returncode == 1
    assert "quick" in result.stdout and "broken on purpose" in result.stdout
    runs = json.loads((tmp_path / "results" / "bench.json").read_text())["runs"]
    assert {r["script"]: r["status"] for r in runs} == {"bench_bad.py": "failed", "bench_ok.py": "ok"}


def test_bad_flag_is_one_line(tmp_path):
    assert_one_line_error(ssm_cli("generate", "--no-such-flag"), code=2)


def test_missing_model_directory_is_one_line(tmp_path):
    assert_one_line_error(ssm_cli("generate", "--model", tmp_path / "nowhere", "--prompt", "x"))


def test_corrupt_checkpoint_is_one_line(checkpoint, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((checkpoint / "ck" / "config.json").read_text())
    (bad / "model.safetensors").write_bytes((checkpoint / "ck" / "model.safetensors").read_bytes()[:100])
    assert_one_line_error(ssm_cli("eval", "--model", bad, "--data", checkpoint / "data"))


def test_streamer_waits_for_a_split_utf8_character():
    out = io.StringIO()
    streamer = TextStreamer(ByteTokenizer(), stream=out)
    streamer.put(torch.tensor([[65]]))  # the prompt
    for byte in "é!".encode():
        streamer.put(torch.tensor([[byte]]))
        assert "\ufffd" not in out.getvalue()
    streamer.end()
    assert out.getvalue() == "é!"
