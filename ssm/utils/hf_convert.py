"""Translate between transformers' MambaForCausalLM / Mamba2ForCausalLM checkpoints and ours.

Tensor names are the same but for ``backbone.embeddings`` (theirs) vs ``backbone.embedding`` (ours);
transformers omits ``lm_head.weight`` when it is tied. Config fields are renamed; what our model
cannot represent (another activation, another norm eps, ...) is an error that names the field.
"""
from __future__ import annotations

import math

from ssm.utils.checkpoint_files import CheckpointError

HF_MODEL_TYPES = {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}
NORM_EPS = 1e-5  # MambaLMHeadModel's norms (mamba_ssm does not make it configurable)


def is_hf_config(config: dict) -> bool:
    return config.get("model_type") in HF_MODEL_TYPES or any(
        a in HF_MODEL_TYPES.values() for a in config.get("architectures") or [])


def hf_model_type(config: dict) -> str:
    if config.get("model_type") in HF_MODEL_TYPES:
        return config["model_type"]
    return "mamba2" if "Mamba2ForCausalLM" in config.get("architectures", []) else "mamba"


def _require(config: dict, field: str, ok: bool, why: str) -> None:
    if not ok:
        raise CheckpointError(f"transformers config field {field}={config.get(field)!r} cannot be represented: {why}")


def _check_common(config: dict) -> None:
    _require(config, "hidden_act", config.get("hidden_act", "silu") == "silu", "our mixers use silu")
    eps = config.get("layer_norm_epsilon", NORM_EPS)
    _require(config, "layer_norm_epsilon", math.isclose(eps, NORM_EPS, rel_tol=1e-6),
             f"MambaLMHeadModel's norms use eps={NORM_EPS}")
    _require(config, "quantization_config", "quantization_config" not in config, "quantized weights")


def config_from_hf(config: dict) -> dict:
    """A MambaConfig dict from a transformers Mamba / Mamba2 config.json dict."""
    _check_common(config)
    ssm_cfg = _mamba2_ssm_cfg(config) if hf_model_type(config) == "mamba2" else _mamba1_ssm_cfg(config)
    return {
        "d_model": config["hidden_size"], "d_intermediate": 0, "n_layer": config["num_hidden_layers"],
        "vocab_size": config["vocab_size"], "ssm_cfg": ssm_cfg, "attn_layer_idx": [], "attn_cfg": {},
        "rms_norm": True, "residual_in_fp32": config.get("residual_in_fp32", True), "fused_add_norm": True,
        "pad_vocab_size_multiple": 1,
        "tie_embeddings": config.get("tie_word_embeddings", hf_model_type(config) == "mamba"),
    }


def _init_fields(config: dict) -> dict:
    # initialisation-only fields (irrelevant to loaded weights, kept for fine-tuning from the config)
    names = {"time_step_min": "dt_min", "time_step_max": "dt_max", "time_step_floor": "dt_init_floor"}
    return {ours: config[theirs] for theirs, ours in names.items() if theirs in config}


def _mamba1_ssm_cfg(config: dict) -> dict:
    d_inner = int(config.get("expand", 2) * config["hidden_size"])
    _require(config, "intermediate_size", config.get("intermediate_size", d_inner) == d_inner,
             f"Mamba-1 needs intermediate_size == expand * hidden_size ({d_inner})")
    rank = config.get("time_step_rank", "auto")
    rank = math.ceil(config["hidden_size"] / 16) if rank == "auto" else rank
    cfg = {"layer": "Mamba1", "d_state": config.get("state_size", 16), "d_conv": config.get("conv_kernel", 4),
           "expand": config.get("expand", 2), "dt_rank": rank,
           "bias": config.get("use_bias", False), "conv_bias": config.get("use_conv_bias", True)}
    if "time_step_scale" in config:
        cfg["dt_scale"] = config["time_step_scale"]
    return {**cfg, **_init_fields(config)}


def _mamba2_ssm_cfg(config: dict) -> dict:
    d_inner = int(config.get("expand", 2) * config["hidden_size"])
    heads, head_dim, groups = config.get("num_heads", 128), config.get("head_dim", 64), config.get("n_groups", 8)
    _require(config, "num_heads", heads * head_dim == d_inner,
             f"num_heads * head_dim ({heads} * {head_dim}) must equal expand * hidden_size ({d_inner})")
    _require(config, "n_groups", heads % groups == 0, f"n_groups must divide num_heads ({heads})")
    cfg = {"layer": "Mamba2", "d_state": config.get("state_size", 128), "d_conv": config.get("conv_kernel", 4),
           "expand": config.get("expand", 2), "headdim": head_dim, "ngroups": groups,
           "chunk_size": config.get("chunk_size", 256), "bias": config.get("use_bias", False),
           "conv_bias": config.get("use_conv_bias", True), "rmsnorm": True,
           # transformers always gates before normalising, whatever a config's norm_before_gate says
           "norm_before_gate": False}
    limit = tuple(_float(x) for x in config.get("time_step_limit", (0.0, math.inf)))
    if limit != (0.0, math.inf):
        cfg["dt_limit"] = limit
    return {**cfg, **_init_fields(config)}


def _float(x) -> float:
    # transformers >= 5 writes inf as {"__float__": "Infinity"} (read_json decodes it; raw dicts may not be)
    return float(x["__float__"]) if isinstance(x, dict) else float(x)


def state_dict_from_hf(state: dict) -> dict:
    return {_rename(k, "backbone.embeddings.", "backbone.embedding."): v for k, v in state.items()}


def state_dict_to_hf(state: dict) -> dict:
    return {_rename(k, "backbone.embedding.", "backbone.embeddings."): v for k, v in state.items()}


def _rename(key: str, old: str, new: str) -> str:
    return new + key[len(old):] if key.startswith(old) else key


def config_to_hf(config, mixer, vocab_rows: int) -> dict:
    """A transformers config.json dict for our model (config: MambaConfig; mixer: layer 0's mixer)."""
    layer = dict(config.ssm_cfg).get("layer", "Mamba1")
    _require_ours(config.d_intermediate == 0, "d_intermediate", "transformers' Mamba has no MLP blocks")
    _require_ours(not config.attn_layer_idx, "attn_layer_idx", "transformers' Mamba has no attention layers")
    _require_ours(config.rms_norm, "rms_norm", "transformers' Mamba uses RMSNorm")
    _require_ours(layer in ("Mamba1", "Mamba2"), "ssm_cfg.layer", "only Mamba1 and Mamba2 exist in transformers")
    common = {"hidden_size": config.d_model, "num_hidden_layers": config.n_layer, "vocab_size": vocab_rows,
              "state_size": mixer.d_state, "expand": mixer.expand, "conv_kernel": mixer.d_conv,
              "use_bias": mixer.in_proj.bias is not None, "use_conv_bias": mixer.conv1d.bias is not None,
              "residual_in_fp32": config.residual_in_fp32, "tie_word_embeddings": config.tie_embeddings,
              "layer_norm_epsilon": NORM_EPS, "hidden_act": "silu"}
    extra = _mamba2_to_hf(mixer) if layer == "Mamba2" else {"time_step_rank": mixer.dt_rank,
                                                             "intermediate_size": mixer.d_inner}
    model_type = "mamba2" if layer == "Mamba2" else "mamba"
    return {"architectures": [HF_MODEL_TYPES[model_type]], "model_type": model_type, **common, **extra}


def _mamba2_to_hf(mixer) -> dict:
    _require_ours(mixer.d_ssm == mixer.d_inner, "ssm_cfg.d_ssm", "transformers' Mamba2 has no MLP branch")
    _require_ours(not mixer.D_has_hdim, "ssm_cfg.D_has_hdim", "transformers' Mamba2 has D per head")
    _require_ours(mixer.rmsnorm and not mixer.norm_before_gate, "ssm_cfg.rmsnorm/norm_before_gate",
                  "transformers' Mamba2 always gates, then applies RMSNorm")
    return {"num_heads": mixer.nheads, "head_dim": mixer.headdim, "n_groups": mixer.ngroups,
            "chunk_size": mixer.chunk_size, "time_step_limit": [float(x) for x in mixer.dt_limit]}


def _require_ours(ok: bool, field: str, why: str) -> None:
    if not ok:
        raise ValueError(f"cannot export to transformers: {field}: {why}")
