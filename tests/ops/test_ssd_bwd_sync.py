"""Session 10's side-by-side switch SSM_SSD_BWD_SYNC1 (ssd_bwd_mma.cuh: one barrier per tile step in dc2, dx and db2,
or session 9's two / three), with dc2's decay pairs in either form (SSM_SSD_BWD_COLPAIRS): both barrier forms compute
the same products in the same order, so every gradient is bitwise equal. Goes with the switch after the rounds."""
import pytest
import torch

from ssm.ops import ssd
from tests.ops.test_ssd import make_inputs

pytestmark = pytest.mark.cuda

NAMES = ["dx", "ddt", "dA", "dB", "dC", "dD", "dz", "ddt_bias", "dinit"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("case", [(2, 2 * 256 + 37, 4, 64, 1, 128, 256), (1, 300, 4, 32, 2, 100, 128),
                                  (2, 150, 2, 5, 1, 9, 64), (1, 200, 6, 128, 3, 200, 64)],
                         ids=lambda c: "b{}_l{}_h{}_p{}_g{}_n{}_c{}".format(*c))
@pytest.mark.parametrize("split", ["1", "0"], ids=["split", "nosplit"])
@pytest.mark.parametrize("pairs", ["1", "0"], ids=["colpairs", "rowpairs"])
def test_one_barrier_form_is_bitwise_equal(dtype, case, split, pairs, monkeypatch):
    monkeypatch.setenv("SSM_SSD_BWD_SPLIT", split)
    monkeypatch.setenv("SSM_SSD_BWD_COLPAIRS", pairs)
    batch, L, H, P, G, N, chunk = case
    args = make_inputs(batch, L, H, P, G, N, dtype, "cuda", D="full", z=True, bias=True, init=True, seq=True)
    dy = torch.randn_like(args["X"])
    grads = {}
    for form in ("1", "0"):
        monkeypatch.setenv("SSM_SSD_BWD_SYNC1", form)
        grads[form] = ssd._bwd_cuda(args["X"], args["dt"].float(), args["A"], args["B"], args["C"], args["D"],
                                    args["z"], args["dt_bias"], args["initial_states"], args["seq_idx"], dy, None,
                                    chunk, True, 0.05, 0.9)
    for name, got, want in zip(NAMES, grads["1"], grads["0"]):
        if want is None:
            assert got is None, name
        else:
            assert torch.equal(got, want), f"{name} differs between the barrier forms"
