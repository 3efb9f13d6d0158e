import contextlib
import dataclasses
import json
import math

import pytest
import torch
import torch.nn as nn

import ssm
from ssm import ops
from ssm.models import MambaConfig, MambaLMHeadModel, MixerModel
from ssm.models import lm as lm_module
from ssm.modules import MHA, GatedMLP, Mamba1, Mamba2
from tests.modules.helpers import InferenceParams, assert_close, grads_everywhere

SMALL = {
    "mamba1": dict(d_model=32, n_layer=2, vocab_size=101, ssm_cfg=dict(d_state=4)),
    "mamba2": dict(d_model=32, n_layer=2, vocab_size=101, pad_vocab_size_multiple=16,
                   ssm_cfg=dict(layer="Mamba2", d_state=8, headdim=8, ngroups=2, chunk_size=4)),
    "hybrid": dict(d_model=32, n_layer=3, vocab_size=101, d_intermediate=40, attn_layer_idx=[1],
                   attn_cfg=dict(num_heads=4, num_heads_kv=2, causal=True, rotary_emb_dim=8, d_conv=4),
                   ssm_cfg=dict(layer="Mamba2", d_state=8, headdim=8, chunk_size=4, dt_limit=(0.0, 0.2)),
                   tie_embeddings=False),
}


def small(name, **kw):
    return MambaLMHeadModel(MambaConfig(**{**SMALL[name], **kw}))


def test_config_fields_and_defaults():
    fields = [(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
              for f in dataclasses.fields(MambaConfig)]
    assert fields == [("d_model", 2560), ("d_intermediate", 0), ("n_layer", 64), ("vocab_size", 50277),
                      ("ssm_cfg", {}), ("attn_layer_idx", []), ("attn_cfg", {}), ("rms_norm", True),
                      ("residual_in_fp32", True), ("fused_add_norm", True), ("pad_vocab_size_multiple", 8),
                      ("tie_embeddings", True)]
    assert MambaConfig().ssm_cfg is not MambaConfig().ssm_cfg
    with pytest.raises(TypeError):
        MambaConfig(d_model=8, not_a_field=1)


MAMBA_130M = dict(d_model=768, n_layer=24, vocab_size=50277, ssm_cfg={}, rms_norm=True, residual_in_fp32=True,
                  fused_add_norm=True, pad_vocab_size_multiple=8)
MAMBA2_130M = dict(d_model=768, d_intermediate=0, n_layer=24, vocab_size=50277, ssm_cfg={"layer": "Mamba2"},
                   attn_layer_idx=[], attn_cfg={}, rms_norm=True, residual_in_fp32=True, fused_add_norm=True,
                   pad_vocab_size_multiple=16, tie_embeddings=True)


def _expected_keys(vocab, mixer):
    keys = {"backbone.embedding.weight": (vocab, 768)}
    for i in range(24):
        keys[f"backbone.layers.{i}.norm.weight"] = (768,)
        keys.update({f"backbone.layers.{i}.mixer.{k}": v for k, v in mixer.items()})
    keys["backbone.norm_f.weight"] = (768,)
    keys["lm_head.weight"] = (vocab, 768)
    return keys


def test_state_dict_of_mamba_130m():
    model = MambaLMHeadModel(MambaConfig(**MAMBA_130M), device="meta")
    mixer = {"A_log": (1536, 16), "D": (1536,), "in_proj.weight": (3072, 768), "conv1d.weight": (1536, 1, 4),
             "conv1d.bias": (1536,), "x_proj.weight": (80, 1536), "dt_proj.weight": (1536, 48),
             "dt_proj.bias": (1536,), "out_proj.weight": (768, 1536)}
    sd = model.state_dict()
    assert len(sd) == 243
    assert {k: tuple(v.shape) for k, v in sd.items()} == _expected_keys(50280, mixer)
    assert model.lm_head.weight is model.backbone.embedding.weight
    assert sd["backbone.layers.0.mixer.A_log"].dtype == torch.float32


def test_state_dict_of_mamba2_130m():
    model = MambaLMHeadModel(MambaConfig(**MAMBA2_130M), device="meta", dtype=torch.bfloat16)
    mixer = {"dt_bias": (24,), "A_log": (24,), "D": (24,), "in_proj.weight": (3352, 768),
             "conv1d.weight": (1792, 1, 4), "conv1d.bias": (1792,), "norm.weight": (1536,),
             "out_proj.weight": (768, 1536)}
    sd = model.state_dict()
    assert len(sd) == 219
    assert {k: tuple(v.shape) for k, v in sd.items()} == _expected_keys(50288, mixer)
    layer = model.backbone.layers[0].mixer
    assert layer.A_log.dtype == layer.dt_bias.dtype == torch.bfloat16 and layer.D.dtype == torch.float32


def test_layer_choice_and_structure():
    model = small("hybrid")
    kinds = [type(block.mixer) for block in model.backbone.layers]
    assert kinds == [Mamba2, MHA, Mamba2]
    assert all(isinstance(b.mlp, GatedMLP) and b.layer_idx == i for i, b in enumerate(model.backbone.layers))
    assert isinstance(model.backbone.norm_f, ops.RMSNorm)
    assert model.lm_head.weight is not model.backbone.embedding.weight
    assert isinstance(small("mamba1").backbone.layers[0].mixer, Mamba1)
    assert isinstance(MambaLMHeadModel(MambaConfig(**SMALL["mamba1"], rms_norm=False)).backbone.norm_f, nn.LayerNorm)
    with pytest.raises(ValueError, match="layer"):
        MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=10, ssm_cfg={"layer": "Mamba9"}))
    assert ssm.MambaLMHeadModel is MambaLMHeadModel


def test_weights_initialized_once(monkeypatch):
    calls = []
    real = lm_module._init_weights
    monkeypatch.setattr(lm_module, "_init_weights", lambda module, **kw: (calls.append((id(module), kw)),
                                                                          real(module, **kw)))
    model = small("hybrid")
    ids = [c[0] for c in calls]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == len(list(model.backbone.modules()))
    assert all(kw["n_residuals_per_layer"] == 2 for _, kw in calls)
    w = model.backbone.layers[0].mixer.out_proj.weight
    bound = 1 / math.sqrt(w.shape[1]) / math.sqrt(2 * 3)
    assert 0.8 * bound < w.abs().max() <= bound


def test_forward_outputs():
    model = small("mamba2")
    ids = torch.randint(0, 101, (2, 9))
    out = model(ids)
    assert type(out).__name__ == "CausalLMOutput" and out._fields == ("logits",)
    assert out.logits.shape == (2, 9, 112)
    last = model(ids, position_ids=torch.zeros_like(ids), num_last_tokens=3).logits
    assert_close(last, out.logits[:, -3:])
    assert model.allocate_inference_cache(2, 20)[1][0].shape == (2, 64 + 2 * 2 * 8, 4)


def _decode_in_pieces(model, ids, pieces):
    params = InferenceParams(max_seqlen=ids.shape[1], max_batch_size=ids.shape[0])
    logits, start = [], 0
    for n in pieces:
        logits.append(model(ids[:, start:start + n], inference_params=params).logits)
        params.seqlen_offset += n
        start += n
    return torch.cat(logits, 1)


@pytest.mark.parametrize("name", list(SMALL))
def test_decoding_matches_forward(name):
    model = small(name)
    ids = torch.randint(0, 101, (2, 12))
    ref = model(ids).logits
    assert_close(_decode_in_pieces(model, ids, [5] + [1] * 7), ref)
    assert_close(_decode_in_pieces(model, ids, [3, 4, 1, 4]), ref)


@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_model_built_under_inference_mode_decodes(name):
    """Parameters that are inference tensors (no version counter for the cached -exp(A_log)) decode
    like ordinary ones."""
    model = small(name)
    ids = torch.randint(0, 101, (2, 8))
    with torch.no_grad():
        ref = _decode_in_pieces(model, ids, [4, 1, 1, 1, 1])
    with torch.inference_mode():
        built = small(name)
        built.load_state_dict(model.state_dict())
        assert built.backbone.layers[0].mixer.A_log.is_inference()
        out = _decode_in_pieces(built, ids, [4, 1, 1, 1, 1])
    assert_close(out, ref)


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(SMALL))
def test_decode_with_final_norm_folded_into_lm_head(name, monkeypatch):
    """A CUDA decode step folds the final add + norm into lm_head (norm_linear): the unfolded logits."""
    model = small(name).cuda().eval()
    ids = torch.randint(0, 101, (2, 12), device="cuda")
    calls = []
    monkeypatch.setattr(lm_module, "norm_linear", lambda *a, f=lm_module.norm_linear, **k: calls.append(1) or f(*a, **k))
    with torch.no_grad():
        folded = _decode_in_pieces(model, ids, [5] + [1] * 7)
        assert len(calls) == 7
        monkeypatch.setattr(lm_module, "FOLD_FINAL_NORM", False)
        unfolded = _decode_in_pieces(model, ids, [5] + [1] * 7)
    assert len(calls) == 7
    assert_close(folded, unfolded)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_prefill_last_token_logits_in_groups(dtype, monkeypatch):
    """A bf16 CPU prefill's last tokens of 6 rows (> CPU_MAX_BATCH) go through the small-batch kernel
    in groups (float32 ones through torch's GEMM): the logits of lm_head's product (float64 check),
    the layers' products inside reuse_buffers, the whole forward as with both off."""
    model = small("mamba1").to(dtype).eval()
    ids = torch.randint(0, 101, (6, 10))
    groups, scopes = [], []
    small_linear = lm_module.small_linear
    monkeypatch.setattr(lm_module, "small_linear", lambda lin, x: groups.append(len(x)) or small_linear(lin, x))
    buffers_for = lm_module.cpu_matmul.buffers_for
    monkeypatch.setattr(lm_module.cpu_matmul, "buffers_for", lambda t: scopes.append(1) or buffers_for(t))
    with torch.no_grad():
        out = model(ids, num_last_tokens=1).logits
        hidden = model.backbone(ids)[:, -1:]
        # (a CPU with native bf16 products, avx512_bf16 / AMX, keeps torch's GEMM: nothing to widen)
        kernel = (dtype == torch.bfloat16 and lm_module.cpu_matmul.widens(hidden[:1, 0], model.lm_head.weight)
                  and lm_module.norm_gemv._cpu_gemv_ok(hidden[:1, 0], model.lm_head.weight, None))
        assert groups == ([4, 2] if kernel else []) and len(scopes) == 2
        ref = hidden.double() @ model.lm_head.weight.double().t()
        assert out.dtype == dtype and out.shape == ref.shape
        assert (out.double() - ref).abs().max() <= (2e-2 if dtype == torch.bfloat16 else 1e-4) * ref.abs().max()
        monkeypatch.setattr(lm_module, "LOGIT_GROUPS", 0)
        monkeypatch.setattr(lm_module.cpu_matmul, "buffers_for", lambda t: contextlib.nullcontext())
        plain = model(ids, num_last_tokens=1).logits
    assert len(groups) == (2 if kernel else 0)
    assert_close(out, plain, 1e-2 if dtype == torch.bfloat16 else 2e-4)


def test_unfused_add_norm_matches_fused():
    fused = small("hybrid")
    unfused = small("hybrid", fused_add_norm=False)
    unfused.load_state_dict(fused.state_dict())
    ids = torch.randint(0, 101, (2, 8))
    assert_close(unfused(ids).logits, fused(ids).logits)


@pytest.mark.parametrize("name", list(SMALL))
def test_varlen_packed_batch_matches_separate_runs(name):
    model = small(name)
    lengths = [5, 2, 8]
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    ids = torch.randint(0, 101, (1, sum(lengths)))
    packed = model(ids, cu_seqlens=cu).logits
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        assert_close(packed[:, s:e], model(ids[:, s:e]).logits)


def test_training_step_reaches_every_parameter():
    model = small("hybrid")
    ids = torch.randint(0, 101, (2, 10))
    logits = model(ids).logits
    loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    assert grads_everywhere(model) == []
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", list(SMALL))
def test_compile_matches_eager_without_recompiling(name):
    torch._dynamo.reset()
    model = small(name, n_layer=2 if name == "hybrid" else 1)  # few layers: compile time on a 2-core CI
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for i, length in enumerate((9, 14)):
            ids = torch.randint(0, 101, (2, length))
            if i == 1:
                torch.compiler.set_stance("fail_on_recompile")
            try:
                assert_close(compiled(ids).logits, model(ids).logits)
            finally:
                torch.compiler.set_stance("default")


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_save_and_load_pretrained_round_trip(tmp_path, safe_serialization):
    model = small("hybrid")
    model.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    loaded = MambaLMHeadModel.from_pretrained(str(tmp_path))
    as_json = json.loads(json.dumps(dataclasses.asdict(model.config)))  # tuples come back as lists
    assert dataclasses.asdict(loaded.config) == as_json
    ids = torch.randint(0, 101, (1, 6))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
