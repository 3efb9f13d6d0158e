"""The module consistency checks on the GPU (CUDA kernels): step vs parallel, chunked prefill
with state passing, varlen packed vs one by one, gradients, for Mamba-1 and Mamba-2 layers,
at shapes that cross the kernels' internal chunking (L past one scan chunk, several SSD chunks)."""
import pytest
import torch

from ssm.modules import Mamba1, Mamba2
from tests.modules.helpers import InferenceParams, assert_close, grads_everywhere, run_in_pieces

pytestmark = pytest.mark.cuda
D_MODEL = 64
LAYERS = {
    "mamba1": lambda: Mamba1(D_MODEL, d_state=16, layer_idx=0),
    "mamba2": lambda: Mamba2(D_MODEL, d_state=32, headdim=16, ngroups=2, chunk_size=64, layer_idx=0),
    "mamba2_gate_first": lambda: Mamba2(D_MODEL, d_state=16, headdim=32, chunk_size=128, layer_idx=0,
                                        norm_before_gate=True, dt_limit=(0.0, 0.1), D_has_hdim=True),
}


def make(kind):
    return LAYERS[kind]().cuda()


@pytest.mark.parametrize("kind", list(LAYERS))
def test_step_matches_forward(kind):
    m = make(kind)
    x = torch.randn(3, 150, D_MODEL, device="cuda")
    ref = m(x)
    out, _ = run_in_pieces(m, x, [141] + [1] * 9)
    assert_close(out, ref, tol=1e-3)


def test_step_matches_forward_with_dt_proj_past_the_fold():
    """dt_rank 96 at batch 3: past proj_state_step.SMALL_MAX_RANK, in the small-batch step kernel (m1_decode_step)."""
    m = Mamba1(D_MODEL, d_state=16, dt_rank=96, layer_idx=0).cuda()
    x = torch.randn(3, 150, D_MODEL, device="cuda")
    ref = m(x)
    out, _ = run_in_pieces(m, x, [141] + [1] * 9)
    assert_close(out, ref, tol=1e-3)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_chunked_prefill_matches_one_pass(kind):
    m = make(kind)
    x = torch.randn(2, 301, D_MODEL, device="cuda")
    ref, ref_params = run_in_pieces(m, x, [301])
    out, params = run_in_pieces(m, x, [77, 130, 1, 93])
    assert_close(out, ref, tol=1e-3)
    for a, b in zip(params.key_value_memory_dict[0], ref_params.key_value_memory_dict[0]):
        assert_close(a, b, tol=1e-3)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_varlen_packed_matches_separate_runs(kind):
    m = make(kind)
    lengths = [70, 1, 133, 9]
    cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
    x = torch.randn(1, sum(lengths), D_MODEL, device="cuda")
    params = InferenceParams(max_seqlen=256, max_batch_size=len(lengths))
    packed = m(x, cu_seqlens=cu, inference_params=params)
    conv_states, ssm_states = params.key_value_memory_dict[0]
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        single, p1 = run_in_pieces(m, x[:, s:e], [e - s])
        assert_close(packed[:, s:e], single, tol=1e-3)
        assert_close(ssm_states[i], p1.key_value_memory_dict[0][1][0], tol=1e-3)
        assert_close(conv_states[i], p1.key_value_memory_dict[0][0][0], tol=1e-3)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_gradients_match_cpu(kind):
    m = make(kind)
    x = torch.randn(2, 97, D_MODEL, device="cuda", requires_grad=True)
    m(x).square().mean().backward()
    assert grads_everywhere(m) == []
    cpu = make(kind).cpu()
    cpu.load_state_dict(m.state_dict())
    xc = x.detach().cpu().requires_grad_()
    cpu(xc).square().mean().backward()
    assert_close(x.grad.cpu(), xc.grad, tol=2e-3)
    for (name, p), pc in zip(m.named_parameters(), cpu.parameters()):
        try:
            assert_close(p.grad.cpu(), pc.grad, tol=2e-3)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
