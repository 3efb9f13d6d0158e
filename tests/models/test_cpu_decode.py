"""The CPU stack plan of MambaLMHeadModel's decode steps (ssm.models.cpu_decode): greedy generation
and every step's logits equal to the per-block path (Mamba-1, Mamba-2, float32 / bfloat16, LayerNorm /
RMSNorm), rebuilt when what it bound moves, and models or batches it does not take keep the
per-block path."""
import pytest
import torch

from ssm.models import MambaConfig, MambaLMHeadModel
from ssm.models import cpu_decode
from ssm.ops import mamba1_block_decode as m1b
from ssm.utils.generation import InferenceParams
from tests.ops.harness import assert_close

SSM_CFGS = {"mamba1": dict(d_state=8),
            "mamba2": dict(layer="Mamba2", d_state=8, headdim=8, ngroups=2, chunk_size=4),
            "mamba2_hdim": dict(layer="Mamba2", d_state=16, headdim=16, D_has_hdim=True)}


def small_model(dtype, rms_norm=False, kind="mamba1"):
    cfg = MambaConfig(d_model=48, n_layer=3, vocab_size=101, rms_norm=rms_norm, ssm_cfg=SSM_CFGS[kind])
    return MambaLMHeadModel(cfg, dtype=dtype)


def _greedy(model, ids, monkeypatch, enabled):
    monkeypatch.setattr(m1b, "ENABLED", enabled)
    runs = []
    run = cpu_decode.StackPlan.run
    monkeypatch.setattr(cpu_decode.StackPlan, "run", lambda self, i: runs.append(1) or run(self, i))
    out = model.generate(ids, max_length=ids.shape[1] + 10, output_scores=True, return_dict_in_generate=True)
    assert len(runs) == (9 if enabled else 0)
    return out


@pytest.mark.parametrize("kind", list(SSM_CFGS))
@pytest.mark.parametrize("dtype, rms_norm", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)])
def test_generation_equal_with_and_without_the_plan(kind, dtype, rms_norm, monkeypatch):
    """Greedy tokens and every step's logits: through the plan's kernel calls as through the blocks' ops
    (Mamba-2: the same kernels with the same arguments, so the same logits bit for bit)."""
    model = small_model(dtype, rms_norm, kind)
    ids = torch.randint(0, 101, (3, 5))
    on, off = _greedy(model, ids, monkeypatch, True), _greedy(model, ids, monkeypatch, False)
    assert torch.equal(on.sequences, off.sequences)
    for a, b in zip(on.scores, off.scores):
        if kind == "mamba1":
            assert_close(a, b, dtype, "logits", factor=0.1)
        else:
            assert torch.equal(a, b)


def _step_logits(model, params, token):
    out = model(token, inference_params=params, num_last_tokens=1).logits[:, -1]
    params.seqlen_offset += 1
    return out


def test_plan_rebuilt_when_what_it_bound_moves():
    torch.manual_seed(0)
    model = small_model(torch.float32)
    ids = torch.randint(0, 101, (2, 4))
    token = ids[:, -1:]
    with torch.no_grad():
        params = InferenceParams(max_seqlen=16, max_batch_size=2)
        model(ids, inference_params=params)
        params.seqlen_offset = 4
        _step_logits(model, params, token)
        plan = params.__dict__[cpu_decode._ATTR]
        assert plan.steps is not None and len(plan.steps) == 3
        _step_logits(model, params, token)
        assert params.__dict__[cpu_decode._ATTR] is plan  # nothing moved: reused
        model.backbone.layers[1].mixer.conv1d.bias.add_(1.0)  # float32, read in place: the plan sees it
        _step_logits(model, params, token)
        assert params.__dict__[cpu_decode._ATTR] is plan
        model.backbone.layers[2].mixer.A_log.add_(0.1)  # A is a copy: its version moves, the plan is rebuilt
        _step_logits(model, params, token)
        plan2 = params.__dict__[cpu_decode._ATTR]
        assert plan2 is not plan
        model.backbone.layers[0].mixer.out_proj.weight.data = model.backbone.layers[0].mixer.out_proj.weight.clone()
        _step_logits(model, params, token)
        assert params.__dict__[cpu_decode._ATTR] is not plan2
        # the same steps from the same states through the per-block path give the same logits
        states = {k: tuple(s.clone() for s in v) for k, v in params.key_value_memory_dict.items()}
        with_plan = _step_logits(model, params, token)
        params.key_value_memory_dict.update(states)
        params.__dict__.pop(cpu_decode._ATTR)
        m1b.ENABLED = False
        try:
            without = _step_logits(model, params, token)
        finally:
            m1b.ENABLED = True
    assert_close(with_plan, without, torch.float32, "logits", factor=0.1)


def _plan_runs(model, ids, monkeypatch):
    runs = []
    run = cpu_decode.StackPlan.run
    monkeypatch.setattr(cpu_decode.StackPlan, "run", lambda self, i: runs.append(1) or run(self, i))
    model.generate(ids, max_length=ids.shape[1] + 4)
    return len(runs)


def test_models_and_batches_it_does_not_take_keep_the_per_block_path(monkeypatch):
    model = small_model(torch.float32)
    assert _plan_runs(model, torch.randint(0, 101, (2, 5)), monkeypatch) == 3
    assert _plan_runs(model, torch.randint(0, 101, (5, 5)), monkeypatch) == 0  # batch over 4
    hybrid = MambaLMHeadModel(MambaConfig(d_model=48, n_layer=2, vocab_size=101, ssm_cfg=dict(d_state=8),
                                          attn_layer_idx=[1], attn_cfg=dict(num_heads=4)))
    assert _plan_runs(hybrid, torch.randint(0, 101, (1, 5)), monkeypatch) == 0  # an attention block
    limited = small_model(torch.float32, kind="mamba2")
    for layer in limited.backbone.layers:
        layer.mixer.dt_limit = (0.0, 0.1)
    assert _plan_runs(limited, torch.randint(0, 101, (1, 5)), monkeypatch) == 0  # dt_limit
    params = InferenceParams(max_seqlen=16, max_batch_size=1)
    ids = torch.randint(0, 101, (1, 4))
    model(ids, inference_params=params)
    params.seqlen_offset = 4
    model(ids[:, -1:], inference_params=params)  # autograd on: the per-block path
    assert params.__dict__.get(cpu_decode._ATTR) is None


def test_bfloat16_parameters_read_through_copies_rebuild_the_plan():
    """A bf16 model's small parameters reach the kernels as float32 copies: changing one in place
    rebuilds the plan, and its steps then match the per-block path."""
    model = small_model(torch.bfloat16)
    ids = torch.randint(0, 101, (1, 4))
    with torch.no_grad():
        params = InferenceParams(max_seqlen=16, max_batch_size=1)
        model(ids, inference_params=params)
        params.seqlen_offset = 4
        _step_logits(model, params, ids[:, -1:])
        plan = params.__dict__[cpu_decode._ATTR]
        model.backbone.layers[0].mixer.conv1d.bias.add_(0.5)
        states = {k: tuple(s.clone() for s in v) for k, v in params.key_value_memory_dict.items()}
        with_plan = _step_logits(model, params, ids[:, -1:])
        assert params.__dict__[cpu_decode._ATTR] is not plan
        params.key_value_memory_dict.update(states)
        params.__dict__.pop(cpu_decode._ATTR)
        m1b.ENABLED = False
        try:
            without = _step_logits(model, params, ids[:, -1:])
        finally:
            m1b.ENABLED = True
    assert_close(with_plan, without, torch.bfloat16, "logits", factor=0.1)


def test_steps_inside_and_outside_inference_mode_share_a_cache():
    model = small_model(torch.float32)
    ids = torch.randint(0, 101, (1, 4))
    params = InferenceParams(max_seqlen=16, max_batch_size=1)
    with torch.no_grad():
        model(ids, inference_params=params)
    params.seqlen_offset = 4
    with torch.inference_mode():
        _step_logits(model, params, ids[:, -1:])
    with torch.no_grad():
        _step_logits(model, params, ids[:, -1:])  # the plan's buffers were made in inference mode: rebuilt
    assert params.__dict__[cpu_decode._ATTR].steps is not None
