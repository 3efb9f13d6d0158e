"""Checkpoint I/O: round trips, sharding, the HF cache layout, and loud, all-or-nothing failures."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssm.utils import hf_convert
from ssm.utils.checkpoint_files import CheckpointError, read_state_dict
from ssm.utils.hf import load_config_hf, load_state_dict_hf
from ssm.utils.hub import resolve_checkpoint_dir
from ssm.utils.weights import load_checkpoint_into, save_pretrained
from tests.utils.models import needs_lm, real_lm
from tests.utils.toy_lm import ToyConfig, ToyLM


def toy(tie=True):
    return ToyLM(ToyConfig(n_layer=2, attn_layer_idx=[1], tie_embeddings=tie))


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def reload(model, directory, tie=True):
    fresh = toy(tie)
    load_checkpoint_into(fresh, read_state_dict(directory))
    return fresh

# ---------------------------------------------------------------------------------------------
# round trips (toy model: the format code is model-agnostic)


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_is_exact(tmp_path, safe, tie):
    model = toy(tie)
    save_pretrained(model, tmp_path, safe_serialization=safe)
    assert json.loads((tmp_path / "config.json").read_text())["tie_embeddings"] == tie
    back = reload(model, tmp_path, tie)
    assert_same_weights(model, back)
    assert (back.lm_head.weight is back.embedding.weight) == tie


def test_tied_weights_stored_once_in_safetensors_both_in_bin(tmp_path):
    model = toy(True)
    save_pretrained(model, tmp_path / "st")
    assert "lm_head.weight" not in load_file(tmp_path / "st" / "model.safetensors")
    save_pretrained(model, tmp_path / "bin", safe_serialization=False)
    stored = torch.load(tmp_path / "bin" / "pytorch_model.bin", weights_only=True)
    assert {"lm_head.weight", "embedding.weight"} <= set(stored)


def test_sharded_safetensors_round_trip(tmp_path):
    model = toy(False)
    save_pretrained(model, tmp_path, max_shard_size=4000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "model.safetensors").exists()
    assert_same_weights(model, reload(model, tmp_path, False))


def test_missing_shard_is_named(tmp_path):
    save_pretrained(toy(False), tmp_path, max_shard_size="4KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        read_state_dict(tmp_path)


def test_saving_another_format_removes_stale_weights(tmp_path):
    model = toy()
    save_pretrained(model, tmp_path, max_shard_size=4000)
    save_pretrained(model, tmp_path, safe_serialization=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "pytorch_model.bin"]


def test_failed_save_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    model = toy()
    save_pretrained(model, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(toy(), tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]

# ---------------------------------------------------------------------------------------------
# errors: named, and nothing half-loaded


def corrupt_state(state, how):
    state = dict(state)
    if how == "missing":
        del state["layers.0.w.weight"]
    elif how == "unexpected":
        state["layers.0.extra"] = torch.zeros(3)
    else:
        state["layers.1.o.weight"] = torch.zeros(5, 5)
    return state


@pytest.mark.parametrize("how,name", [("missing", "layers.0.w.weight"), ("unexpected", "layers.0.extra"),
                                      ("misshaped", "layers.1.o.weight")])
def test_bad_tensors_are_named_and_nothing_loads(how, name):
    source, target = toy(False), toy(False)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")) as info:
        load_checkpoint_into(target, corrupt_state(source.state_dict(), how))
    assert "nothing was loaded" in str(info.value)
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_corrupt_safetensors_is_named(tmp_path):
    save_pretrained(toy(), tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        read_state_dict(tmp_path)


def test_corrupt_bin_is_named(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        read_state_dict(tmp_path)


def test_missing_directory_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_checkpoint_dir(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="Hugging Face cache"):
        resolve_checkpoint_dir("org/not-cached")
    with pytest.raises(FileNotFoundError, match="no weights file"):
        read_state_dict(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_config_hf(tmp_path)

# ---------------------------------------------------------------------------------------------
# the Hugging Face cache layout, offline


def make_cache_entry(root, repo_id, commit, files):
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, write in files.items():
        write(snapshot / name)
    return snapshot


@pytest.mark.parametrize("env", ["HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"])
def test_hub_name_resolves_through_cache(tmp_path, monkeypatch, env):
    for var in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(env, str(tmp_path))
    root = tmp_path / "hub" if env == "HF_HOME" else tmp_path
    state = {"w": torch.randn(3, 4), "n": torch.arange(5)}
    snapshot = make_cache_entry(root, "org/tiny", "0123abcd", {
        "config.json": lambda p: p.write_text(json.dumps({"d_model": 4})),
        "model.safetensors": lambda p: save_file(state, str(p))})
    assert resolve_checkpoint_dir("org/tiny") == snapshot
    assert resolve_checkpoint_dir("org/tiny", revision="0123abcd") == snapshot
    assert load_config_hf("org/tiny") == {"d_model": 4}
    loaded = load_state_dict_hf("org/tiny", dtype=torch.float64)
    assert loaded["w"].dtype == torch.float64 and loaded["n"].dtype == torch.int64
    assert torch.equal(loaded["w"], state["w"].double())


def test_download_only_through_huggingface_hub_when_online(tmp_path, monkeypatch):
    import sys
    import types
    calls = []
    fake = types.ModuleType("huggingface_hub")
    fake.snapshot_download = lambda repo_id, revision=None, allow_patterns=None: calls.append(repo_id) or str(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_checkpoint_dir("org/remote") == tmp_path and calls == ["org/remote"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint_dir("org/remote")

# ---------------------------------------------------------------------------------------------
# transformers config translation (no transformers needed)


def test_hf_mamba_config_translation():
    cfg = hf_convert.config_from_hf({
        "model_type": "mamba", "hidden_size": 48, "num_hidden_layers": 3, "vocab_size": 101, "state_size": 8,
        "expand": 2, "conv_kernel": 3, "time_step_rank": "auto", "use_bias": True, "use_conv_bias": False,
        "residual_in_fp32": False, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": False})
    assert cfg["d_model"] == 48 and cfg["n_layer"] == 3 and cfg["vocab_size"] == 101
    assert cfg["pad_vocab_size_multiple"] == 1 and cfg["tie_embeddings"] is False and cfg["residual_in_fp32"] is False
    assert cfg["ssm_cfg"] == {"layer": "Mamba1", "d_state": 8, "d_conv": 3, "expand": 2, "dt_rank": 3,
                              "bias": True, "conv_bias": False}


def test_hf_mamba2_config_translation():
    cfg = hf_convert.config_from_hf({
        "model_type": "mamba2", "hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 50, "state_size": 16,
        "expand": 2, "num_heads": 8, "head_dim": 8, "n_groups": 2, "chunk_size": 64,
        "time_step_limit": [0.0, {"__float__": "Infinity"}]})
    ssm_cfg = cfg["ssm_cfg"]
    assert ssm_cfg["layer"] == "Mamba2" and ssm_cfg["headdim"] == 8 and ssm_cfg["ngroups"] == 2
    assert ssm_cfg["chunk_size"] == 64 and ssm_cfg["norm_before_gate"] is False and "dt_limit" not in ssm_cfg
    assert cfg["tie_embeddings"] is False
    limited = hf_convert.config_from_hf({"model_type": "mamba2", "hidden_size": 32, "num_hidden_layers": 2,
                                         "vocab_size": 50, "num_heads": 8, "head_dim": 8, "n_groups": 1,
                                         "time_step_limit": [0.01, 0.5]})
    assert limited["ssm_cfg"]["dt_limit"] == (0.01, 0.5)


@pytest.mark.parametrize("field,value", [("hidden_act", "gelu"), ("layer_norm_epsilon", 1e-6),
                                         ("num_heads", 5), ("quantization_config", {"bits": 4})])
def test_hf_features_we_cannot_represent_are_named(field, value):
    config = {"model_type": "mamba2", "hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 50,
              "num_heads": 8, "head_dim": 8, "n_groups": 1, field: value}
    with pytest.raises(CheckpointError, match=field):
        hf_convert.config_from_hf(config)


def test_hf_key_renames():
    state = {"backbone.embeddings.weight": 1, "backbone.layers.0.mixer.A_log": 2, "lm_head.weight": 3}
    ours = hf_convert.state_dict_from_hf(state)
    assert set(ours) == {"backbone.embedding.weight", "backbone.layers.0.mixer.A_log", "lm_head.weight"}
    assert hf_convert.state_dict_to_hf(ours) == state

# ---------------------------------------------------------------------------------------------
# MambaLMHeadModel (from_pretrained / save_pretrained)


@needs_lm
@pytest.mark.parametrize("kind", ["mamba1", "mamba2", "hybrid"])
@pytest.mark.parametrize("safe", [True, False])
def test_lm_round_trip(tmp_path, kind, safe):
    model = real_lm(kind)
    model.save_pretrained(tmp_path, safe_serialization=safe)
    config = json.loads((tmp_path / "config.json").read_text())
    assert len(config) == 12
    back = type(model).from_pretrained(tmp_path)
    assert back.config == model.config
    assert_same_weights(model, back)
    assert back.lm_head.weight is back.backbone.embedding.weight
    ids = torch.randint(0, 61, (2, 6))
    torch.testing.assert_close(back(ids).logits, model(ids).logits, rtol=0, atol=0)


@needs_lm
def test_lm_untied_round_trip(tmp_path):
    model = real_lm("mamba2", tie_embeddings=False)
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path)
    assert_same_weights(model, back)
    assert back.lm_head.weight is not back.backbone.embedding.weight


@needs_lm
def test_lm_mamba_ssm_layout_with_missing_fields(tmp_path):
    # like state-spaces/mamba-130m: config.json lacks fields that take the dataclass defaults
    model = real_lm("mamba1")
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 32, "n_layer": 2, "vocab_size": 61,
                                                      "ssm_cfg": {"d_state": 8}}))
    back = type(model).from_pretrained(tmp_path)
    assert_same_weights(model, back)


@needs_lm
def test_lm_unknown_config_field_is_named(tmp_path):
    model = real_lm("mamba1")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "d_modle": 3}))
    with pytest.raises(CheckpointError, match="d_modle"):
        type(model).from_pretrained(tmp_path)


@needs_lm
def test_lm_dtype_and_device_are_honoured(tmp_path):
    model = real_lm("mamba2")
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path, device="cpu", dtype=torch.bfloat16)
    emb = back.backbone.embedding.weight
    assert emb.dtype == torch.bfloat16 and emb.device.type == "cpu"
    assert torch.equal(emb, model.backbone.embedding.weight.to(torch.bfloat16))


@needs_lm
def test_lm_from_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    model = real_lm("mamba1")
    snapshot = make_cache_entry(tmp_path, "state-spaces/tiny", "feedbeef", {})
    model.save_pretrained(snapshot, safe_serialization=False)
    assert_same_weights(model, type(model).from_pretrained("state-spaces/tiny"))


def test_save_leaves_no_temp_files(tmp_path):
    save_pretrained(toy(), tmp_path)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
