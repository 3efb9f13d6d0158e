"""Process-wide settings made by ``import ssm``: transparent huge pages for large CPU tensors,
unless SSM_THP=0 or the caller set THP_MEM_ALLOC_ENABLE."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _thp_after_import(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("SSM_THP", "THP_MEM_ALLOC_ENABLE")}
    env.update(env_extra, PYTHONPATH=str(ROOT))
    code = "import os, ssm; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize("env, expect", [({}, "1"), ({"SSM_THP": "0"}, "None"),
                                         ({"THP_MEM_ALLOC_ENABLE": "0"}, "0")])
def test_thp_default_and_opt_out(env, expect):
    assert _thp_after_import(env) == expect
