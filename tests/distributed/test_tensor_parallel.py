"""Tensor-parallel Mamba2 / MHA / MambaLMHeadModel on ``world`` processes against one process
on the same weights and data (float64): logits, gradients (sharded ones against the matching
slice), one decode step, the full-checkpoint round trip; and bad process_group sizes."""
import warnings

import pytest
import torch
import torch.distributed as dist

from ssm.distributed import all_reduce
from ssm.distributed.sharding import _unshard, shard_plan, shard_state_dict
from ssm.models import MambaConfig, MambaLMHeadModel
from ssm.modules import MHA, GatedMLP, Mamba2
from ssm.utils.checkpoint_files import CheckpointError
from ssm.utils.generation import InferenceParams
from ssm.utils.weights import save_hf
from tests.distributed import mp
from tests.distributed.test_collectives import _Group, cases

F64 = torch.float64
D_MODEL = 24
# heads, groups and MLP channels divisible by 2 and 3; the gated norm spans 2 heads per group
MAMBA2 = dict(d_state=4, headdim=2, ngroups=6, d_ssm=24, chunk_size=4)
MHA_CFG = dict(num_heads=12, num_heads_kv=6, head_dim=4, causal=True, rotary_emb_dim=4, d_conv=4, mlp_dim=768)
CONFIGS = {
    "mamba2_attn_mlp": dict(d_model=D_MODEL, n_layer=3, vocab_size=101, d_intermediate=384, attn_layer_idx=[1],
                            attn_cfg=MHA_CFG, ssm_cfg=dict(layer="Mamba2", **MAMBA2)),
    "mamba1_attn": dict(d_model=D_MODEL, n_layer=2, vocab_size=101, attn_layer_idx=[0],
                        attn_cfg=dict(MHA_CFG, qkv_proj_bias=True, out_proj_bias=True),
                        ssm_cfg=dict(d_state=4), tie_embeddings=False),
}


def close(actual, expected):
    assert not torch.isnan(actual).any()
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())


def check_grads(tp_module, full_module, rank, world, sequence_parallel=False):
    """Sharded grads equal the slice of the single-process grads; replicated ones equal them
    (summed over ranks first when the tokens are split: each rank saw its own)."""
    plan = shard_plan(tp_module)
    full = shard_state_dict({n: p.grad for n, p in full_module.named_parameters()}, plan, rank, world)
    for name, p in tp_module.named_parameters():
        grad = all_reduce(p.grad, dist.group.WORLD) if sequence_parallel and name not in plan else p.grad
        close(grad, full[name])


def _sequence_parallel_layer(make, rank, world, dev, shape, **kwargs):
    """A layer with sequence_parallel=True fed this rank's share of the first dimension."""
    full = make(device=dev, dtype=F64)
    tp = make(device=dev, dtype=F64, process_group=dist.group.WORLD, sequence_parallel=True)
    tp.load_state_dict(shard_state_dict(full.state_dict(), shard_plan(tp), rank, world))
    x, g = torch.randn(*shape, dtype=F64, device=dev), torch.randn(*shape, dtype=F64, device=dev)
    xf = x.clone().requires_grad_()
    (full(xf, **kwargs) * g).sum().backward()
    rows = slice(rank * shape[0] // world, (rank + 1) * shape[0] // world)
    xl = x[rows].clone().requires_grad_()
    y = tp(xl, **kwargs)
    close(y, full(x, **kwargs)[rows])
    (y * g[rows]).sum().backward()
    close(xl.grad, xf.grad[rows])
    check_grads(tp, full, rank, world, sequence_parallel=True)


def _decode_step(model, ids, next_ids):
    """Logits of one decode step after a prefill of ids (B, L)."""
    params = InferenceParams(max_seqlen=ids.shape[1] + 1, max_batch_size=ids.shape[0])
    model(ids, inference_params=params)
    params.seqlen_offset = ids.shape[1]
    return model(next_ids, inference_params=params).logits


def _lm(rank, world, dev, path, saved):
    """From a full checkpoint: logits, grads, a decode step, and save_pretrained back to a full one."""
    group = dist.group.WORLD
    full = MambaLMHeadModel.from_pretrained(path, device=dev, dtype=F64)
    tp = MambaLMHeadModel.from_pretrained(path, device=dev, dtype=F64, process_group=group)
    vocab = full.config.vocab_size
    ids, next_ids = torch.randint(0, vocab, (2, 7), device=dev), torch.randint(0, vocab, (2, 1), device=dev)
    logits = full(ids).logits
    g = torch.randn_like(logits)
    (logits * g).sum().backward()
    tp_logits = tp(ids).logits
    close(tp_logits, logits)
    (tp_logits * g).sum().backward()
    check_grads(tp, full, rank, world)
    with torch.no_grad():
        close(_decode_step(tp, ids, next_ids), _decode_step(full, ids, next_ids))
    tp.save_pretrained(saved)
    back = MambaLMHeadModel.from_pretrained(saved, device=dev, dtype=F64)
    assert back.config == full.config
    for (name, a), (_, b) in zip(back.state_dict().items(), full.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def _worker(rank, world, backend, seed, paths):
    warnings.filterwarnings("ignore", message="ssm: .* falls back to the reference path")
    dev = mp.device_for(backend, rank)
    torch.manual_seed(seed)  # the same weights and data on every rank
    mamba2 = lambda **kw: Mamba2(D_MODEL, **MAMBA2, bias=True, D_has_hdim=True, **kw)  # noqa: E731
    _sequence_parallel_layer(mamba2, rank, world, dev, (2 * world * 5, D_MODEL), seqlen=5)
    mha = lambda **kw: MHA(D_MODEL, **MHA_CFG, **kw)  # noqa: E731
    _sequence_parallel_layer(mha, rank, world, dev, (world, 6, D_MODEL))
    for name, path in paths.items():
        _lm(rank, world, dev, path, f"{path}-saved-by-{world}")
    return len(paths)


@pytest.mark.parametrize("world, backend", cases([2, 3]))
def test_tensor_parallel_matches_single_process(world, backend, fresh_seed, tmp_path):
    paths = {}
    for name, config in CONFIGS.items():
        MambaLMHeadModel(MambaConfig(**config)).save_pretrained(tmp_path / name)
        paths[name] = str(tmp_path / name)
    assert mp.run_workers(_worker, world, fresh_seed, paths, backend=backend) == [len(CONFIGS)] * world


def test_bad_process_group_sizes_raise_before_any_collective():
    # _Group cannot communicate: any collective before the check would fail differently
    with pytest.raises(ValueError, match="process_group: ngroups = 6 is not divisible by the world size 4"):
        Mamba2(D_MODEL, **MAMBA2, process_group=_Group(4))
    with pytest.raises(ValueError, match="process_group: nheads = 3 "):
        Mamba2(D_MODEL, d_state=4, headdim=16, process_group=_Group(2))
    with pytest.raises(ValueError, match="process_group: num_heads_kv = 6 "):
        MHA(D_MODEL, **{**MHA_CFG, "num_heads": 12}, process_group=_Group(4))
    with pytest.raises(ValueError, match="process_group: hidden_features = 128 is not divisible by the world size 3"):
        GatedMLP(D_MODEL, hidden_features=40, process_group=_Group(3))
    with pytest.raises(ValueError, match="process_group: .* not divisible by the world size 5"):
        MambaLMHeadModel(MambaConfig(**CONFIGS["mamba2_attn_mlp"]), process_group=_Group(5))


def test_local_shapes_and_decoding_refused_with_sequence_parallel():
    m = Mamba2(D_MODEL, **MAMBA2, process_group=_Group(3, 1), sequence_parallel=True, layer_idx=0)
    assert (m.d_inner, m.d_ssm, m.nheads, m.ngroups) == (16, 8, 4, 2)
    assert m.in_proj.weight.shape == (2 * 16 + 2 * 2 * 4 + 4, D_MODEL) and m.out_proj.weight.shape == (D_MODEL, 16)
    assert m.norm.group_size == 4
    with pytest.raises(ValueError, match="sequence_parallel"):
        m(torch.randn(1, 3, D_MODEL), inference_params=InferenceParams(max_seqlen=3, max_batch_size=1))
    a = MHA(D_MODEL, **MHA_CFG, process_group=_Group(3), layer_idx=1)
    assert (a.num_heads, a.num_heads_kv, a.mlp_dim) == (4, 2, 256)
    mlp = GatedMLP(D_MODEL, hidden_features=384, process_group=_Group(3))
    assert mlp.fc1.weight.shape == (256, D_MODEL) and mlp.fc2.weight.shape == (D_MODEL, 128)
    with pytest.raises(ValueError, match="sequence_parallel"):
        a(torch.randn(1, 3, D_MODEL), inference_params=InferenceParams(max_seqlen=3, max_batch_size=1))


@pytest.mark.parametrize("world", [2, 3])
def test_shard_plan_slices_and_reassembles_a_full_state_dict(world):
    config = MambaConfig(**CONFIGS["mamba2_attn_mlp"])
    full = MambaLMHeadModel(config).state_dict()
    ranks = [MambaLMHeadModel(config, device="meta", process_group=_Group(world, r)) for r in range(world)]
    plan = shard_plan(ranks[0])
    assert {k.split(".", 3)[-1] for k in plan} == {
        "mixer.in_proj.weight", "mixer.conv1d.weight", "mixer.conv1d.bias", "mixer.dt_bias", "mixer.A_log",
        "mixer.D", "mixer.norm.weight", "mixer.out_proj.weight", "mixer.in_proj.bias", "mlp.fc1.weight",
        "mlp.fc2.weight"}
    shards = [shard_state_dict(full, plan, r, world) for r in range(world)]
    for r, model in enumerate(ranks):
        assert {k: v.shape for k, v in shards[r].items()} == {k: v.shape for k, v in model.state_dict().items()}
    for key, split in plan.items():
        assert torch.equal(_unshard([shard[key] for shard in shards], split), full[key])
    # rank r's heads: Mamba2 dt rows of in_proj are the r-th slice of the full dt rows
    key = "backbone.layers.0.mixer.in_proj.weight"
    assert torch.equal(shards[world - 1][key][-12 // world:], full[key][-12 // world:])
    bad = dict(full, **{"backbone.layers.0.mixer.A_log": torch.zeros(7)})
    with pytest.raises(CheckpointError, match="backbone.layers.0.mixer.A_log"):
        shard_state_dict(bad, plan, 0, world)
    with pytest.raises(ValueError, match="save_pretrained"):
        save_hf(ranks[0], "never-written")
