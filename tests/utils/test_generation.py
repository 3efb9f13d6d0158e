"""Decode loop, sampling and logit processors (CPU, float32, tiny models)."""
import pytest
import torch

from ssm.utils.generation import (
    InferenceParams,
    decode,
    modify_logit_for_repetition_penalty,
    modify_logits_for_min_p_filtering,
    modify_logits_for_top_k_filtering,
    modify_logits_for_top_p_filtering,
    sample,
)
from tests.utils.models import ALL_KINDS, TOY_KINDS, build, vocab_of

# ---------------------------------------------------------------------------------------------
# logit processors and sampling


def test_top_k_filtering_keeps_k_largest():
    logits = torch.randn(3, 20)
    kept = logits.topk(5, dim=-1).indices
    modify_logits_for_top_k_filtering(logits, 5)
    finite = torch.isfinite(logits)
    assert (finite.sum(dim=-1) == 5).all()
    assert finite.gather(1, kept).all()
    everything = torch.randn(2, 4)
    out = everything.clone()
    modify_logits_for_top_k_filtering(out, 10)  # k past the vocabulary keeps everything
    assert torch.equal(out, everything)


def test_top_p_filtering_keeps_smallest_nucleus():
    logits = torch.randn(4, 30)
    top_p = 0.7
    expected = torch.zeros_like(logits, dtype=torch.bool)
    for r in range(4):
        probs, order = logits[r].softmax(-1).sort(descending=True)
        # keep tokens until the mass before them reaches top_p
        before = probs.cumsum(0) - probs
        expected[r, order[before < top_p]] = True
    out = logits.clone()
    modify_logits_for_top_p_filtering(out, top_p)
    assert torch.equal(torch.isfinite(out), expected)
    assert torch.equal(out[expected], logits[expected])


@pytest.mark.parametrize("top_p", [0.0, 1.0])
def test_top_p_filtering_noop_at_bounds(top_p):
    logits = torch.randn(2, 10)
    out = logits.clone()
    modify_logits_for_top_p_filtering(out, top_p)
    assert torch.equal(out, logits)


def test_min_p_is_relative_to_each_rows_top_probability():
    # three rows of very different sharpness: one threshold on raw logits could not serve all
    logits = torch.randn(3, 50) * torch.tensor([[0.3], [3.0], [10.0]]) + torch.tensor([[5.0], [-4.0], [0.0]])
    min_p = 0.2
    probs = logits.softmax(-1)
    expected = probs >= min_p * probs.amax(-1, keepdim=True)
    out = logits.clone()
    modify_logits_for_min_p_filtering(out, min_p)
    assert torch.equal(torch.isfinite(out), expected)
    assert torch.equal(out[expected], logits[expected])


def test_min_p_bounds():
    logits = torch.randn(2, 10)
    out = logits.clone()
    modify_logits_for_min_p_filtering(out, 0.0)
    assert torch.equal(out, logits)
    with pytest.raises(ValueError, match="min_p"):
        modify_logits_for_min_p_filtering(out, 1.5)


def test_repetition_penalty():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0], [0.5, 0.5, -0.5, 3.0]])
    prev = torch.tensor([[0, 1, 1], [3, 2, 3]])
    out = modify_logit_for_repetition_penalty(logits.clone(), prev, 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -4.0, 1.0, -1.0], [0.5, 0.5, -1.0, 1.5]]))
    same = modify_logit_for_repetition_penalty(logits.clone(), prev, 1.0)
    assert torch.equal(same, logits)


def test_sample_greedy_is_argmax():
    logits = torch.randn(5, 40)
    assert torch.equal(sample(logits, top_k=1, temperature=0.3, top_p=0.5), logits.argmax(-1))


def test_sample_top_k_stays_in_top_k():
    logits = torch.randn(6, 40)
    allowed = logits.topk(3, dim=-1).indices
    for _ in range(20):
        tokens = sample(logits, top_k=3, temperature=2.0)
        assert (allowed == tokens[:, None]).any(dim=-1).all()


@pytest.mark.parametrize("top_k", [0, 10])
def test_sample_min_p_per_row_with_batch(top_k):
    logits = torch.randn(4, 40) * torch.tensor([[0.5], [2.0], [4.0], [8.0]])
    probs = logits.softmax(-1)
    allowed = probs >= 0.3 * probs.amax(-1, keepdim=True)
    for _ in range(20):
        tokens = sample(logits, top_k=top_k, min_p=0.3)
        assert allowed.gather(1, tokens[:, None]).all()


def test_sample_tiny_top_p_is_greedy():
    logits = torch.randn(5, 40)
    assert torch.equal(sample(logits, top_k=0, top_p=1e-6), logits.argmax(-1))


def test_sample_rejects_top_p_above_one():
    with pytest.raises(ValueError, match="top_p"):
        sample(torch.randn(2, 5), top_k=0, top_p=1.5)


def test_inference_params_reset_keeps_caches():
    params = InferenceParams(max_seqlen=8, max_batch_size=2, seqlen_offset=5,
                             lengths_per_sample=torch.full((2,), 5, dtype=torch.int32))
    params.key_value_memory_dict[0] = torch.ones(2)
    params.reset(16, 3)
    assert (params.max_seqlen, params.max_batch_size, params.seqlen_offset) == (16, 3, 0)
    assert params.lengths_per_sample.eq(0).all() and 0 in params.key_value_memory_dict

# ---------------------------------------------------------------------------------------------
# decode loop


def greedy_by_full_forwards(model, ids, n_new, penalty=1.0):
    """Reference: argmax of a full forward over the whole sequence, n_new times."""
    seq = ids
    for _ in range(n_new):
        logits = model(seq).logits[:, -1]
        logits = modify_logit_for_repetition_penalty(logits, seq, penalty)
        seq = torch.cat([seq, logits.argmax(-1)[:, None]], dim=1)
    return seq


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_greedy_equals_argmax_of_full_forwards(kind):
    model = build(kind)
    ids = torch.randint(0, vocab_of(model), (2, 7))
    out = model.generate(ids, max_length=13)
    assert torch.equal(out, greedy_by_full_forwards(model, ids, 6))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_teacher_outputs_scores_equal_forward_logits(kind):
    model = build(kind)
    teacher = torch.randint(0, vocab_of(model), (2, 12))
    out = model.generate(teacher[:, :5], max_length=12, teacher_outputs=teacher, top_k=0,
                         return_dict_in_generate=True, output_scores=True)
    assert torch.equal(out.sequences, teacher)
    logits = model(teacher).logits
    assert len(out.scores) == 7
    for t, score in enumerate(out.scores):
        torch.testing.assert_close(score, logits[:, 4 + t], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", TOY_KINDS)
def test_repetition_penalty_in_generate(kind):
    model = build(kind)
    ids = torch.randint(0, vocab_of(model), (2, 4))
    out = model.generate(ids, max_length=12, repetition_penalty=3.0)
    assert torch.equal(out, greedy_by_full_forwards(model, ids, 8, penalty=3.0))


def expected_with_eos(seq, prompt_len, eos):
    """Apply the per-row EOS rule to a free-running greedy result; cut when every row is done."""
    seq = seq.clone()
    new = seq[:, prompt_len:]
    hit = (new == eos).int().cumsum(dim=1) > 0
    new[hit] = eos
    done_at = [int(row.nonzero()[0]) + 1 if row.any() else new.shape[1] for row in hit]
    return seq[:, : prompt_len + max(done_at)]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_eos_stops_each_row(kind):
    model = build(kind)
    ids = torch.randint(0, vocab_of(model), (3, 5))
    free = model.generate(ids, max_length=14)
    eos = int(free[1, 7])  # row 1 emits it as its third new token
    out = model.generate(ids, max_length=14, eos_token_id=eos)
    assert torch.equal(out, expected_with_eos(free, 5, eos))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_eos_everywhere_stops_early(kind):
    model = build(kind)
    ids = torch.randint(0, vocab_of(model), (2, 4))
    teacher = torch.cat([ids, torch.full((2, 2), 3)], dim=1)
    out = model.generate(ids, max_length=20, eos_token_id=3, teacher_outputs=teacher,
                         return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape == (2, 5) and len(out.scores) == 1


def prompts_of(model, lengths):
    return [torch.randint(0, vocab_of(model), (n,)) for n in lengths]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_prompts_of_different_lengths_equal_generating_alone(kind):
    model = build(kind)
    prompts = prompts_of(model, [3, 7, 5, 7])
    out = model.generate(prompts, max_length=12, return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape == (4, 12) and len(out.scores) == 5
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], max_length=len(p) + 5, return_dict_in_generate=True, output_scores=True)
        assert torch.equal(out.sequences[i, 7 - len(p):], alone.sequences[0])
        for batched, single in zip(out.scores, alone.scores):
            torch.testing.assert_close(batched[i], single[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_attention_mask_left_padding_equals_list(kind):
    model = build(kind)
    prompts = prompts_of(model, [2, 6, 4])
    from_list = model.generate(prompts, max_length=10, pad_token_id=0)
    mask = (from_list[:, :6] != -1).long()
    for i, p in enumerate(prompts):
        mask[i, : 6 - len(p)] = 0
    ids = from_list[:, :6].clone()
    ids[mask == 0] = 5  # any pad value: masked positions must not matter
    from_mask = model.generate(ids, max_length=10, attention_mask=mask)
    assert torch.equal(from_mask[:, 6:], from_list[:, 6:])


@pytest.mark.parametrize("kind", TOY_KINDS)
def test_different_lengths_with_eos_and_penalty(kind):
    model = build(kind)
    prompts = prompts_of(model, [4, 2])
    out = model.generate(prompts, max_length=11, repetition_penalty=2.0, eos_token_id=7)
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], max_length=len(p) + 7, repetition_penalty=2.0, eos_token_id=7)
        n = alone.shape[1] - len(p)
        assert torch.equal(out[i, 4 - len(p): 4 + n], alone[0])
        assert (out[i, 4 + n:] == 7).all()


def test_right_padding_is_rejected():
    model = build("toy")
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match="LEFT padding"):
        model.generate(torch.ones(2, 3, dtype=torch.long), max_length=5, attention_mask=mask)


class RecordingStreamer:
    def __init__(self):
        self.chunks, self.ended = [], 0

    def put(self, value):
        assert not self.ended
        self.chunks.append(value.clone())

    def end(self):
        self.ended += 1


def test_streamer_receives_prompt_then_each_token():
    model = build("toy")
    ids = torch.randint(0, vocab_of(model), (1, 4))
    streamer = RecordingStreamer()
    out = model.generate(ids, max_length=10, streamer=streamer)
    assert streamer.ended == 1 and len(streamer.chunks) == 7
    assert torch.equal(streamer.chunks[0], ids)
    assert all(c.shape == (1, 1) for c in streamer.chunks[1:])
    assert torch.equal(torch.cat(streamer.chunks, dim=1), out)


def test_streamer_with_transformers_text_streamer():
    transformers = pytest.importorskip("transformers")

    class Tokenizer:  # decodes token i as the letter chr(97 + i % 26)
        def decode(self, ids, **kwargs):
            return "".join(chr(97 + int(i) % 26) + " " for i in ids)

    model = build("toy")
    ids = torch.randint(0, vocab_of(model), (1, 3))
    streamer = transformers.TextStreamer(Tokenizer(), skip_prompt=True)
    printed = []
    streamer.on_finalized_text = lambda text, stream_end=False: printed.append(text)
    out = model.generate(ids, max_length=8, streamer=streamer)
    assert "".join(printed) == Tokenizer().decode(out[0, 3:])


def test_output_object_and_shapes():
    model = build("toy")
    ids = torch.randint(0, vocab_of(model), (2, 5))
    plain = model.generate(ids, max_length=9)
    assert isinstance(plain, torch.Tensor) and plain.shape == (2, 9) and plain.dtype == torch.long
    out = model.generate(ids, max_length=9, return_dict_in_generate=True)
    assert torch.equal(out.sequences, plain) and out.scores is None
    out = model.generate(ids, max_length=9, return_dict_in_generate=True, output_scores=True, vocab_size=20)
    assert len(out.scores) == 4 and all(s.shape == (2, 20) for s in out.scores)


def test_output_class_is_transformers_when_available():
    transformers = pytest.importorskip("transformers")
    out = build("toy").generate(torch.ones(1, 2, dtype=torch.long), max_length=4, return_dict_in_generate=True)
    assert isinstance(out, transformers.generation.GenerateDecoderOnlyOutput)


def test_prompt_at_least_max_length_gives_one_token():
    model = build("toy")
    ids = torch.randint(0, vocab_of(model), (2, 6))
    assert model.generate(ids, max_length=4).shape == (2, 7)


def test_unknown_kwarg_is_a_type_error():
    with pytest.raises(TypeError):
        build("toy").generate(torch.ones(1, 2, dtype=torch.long), max_length=4, num_beams=2)


@pytest.mark.parametrize("kind", TOY_KINDS)
def test_cg_is_ignored_on_cpu(kind):
    model = build(kind)
    ids = torch.randint(0, vocab_of(model), (2, 3))
    assert torch.equal(model.generate(ids, max_length=8, cg=True), model.generate(ids, max_length=8))


def test_enable_timing_on_cpu(capsys):
    decode(torch.ones(1, 2, dtype=torch.long), build("toy"), max_length=4, enable_timing=True)
    assert "ms" in capsys.readouterr().out


def test_sampling_is_seeded_and_in_range():
    model = build("toy")
    ids = torch.randint(0, vocab_of(model), (3, 4))
    torch.manual_seed(1)
    a = model.generate(ids, max_length=12, top_k=0, top_p=0.9, temperature=0.7, min_p=0.05)
    torch.manual_seed(1)
    b = model.generate(ids, max_length=12, top_k=0, top_p=0.9, temperature=0.7, min_p=0.05)
    assert torch.equal(a, b) and a.shape == (3, 12) and int(a.max()) < vocab_of(model)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["toy"] + [k for k in ALL_KINDS if not isinstance(k, str)])
def test_cuda_graph_decode_equals_eager(kind):
    model = build(kind).cuda()
    ids = torch.randint(0, vocab_of(model), (3, 5), device="cuda")
    eager = model.generate(ids, max_length=16, return_dict_in_generate=True, output_scores=True)
    graphed = model.generate(ids, max_length=16, cg=True, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(graphed.sequences, eager.sequences)
    for a, b in zip(graphed.scores, eager.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    captured = dict(model._decoding_cache.callables)
    again = model.generate(ids[:, :3], max_length=12, cg=True)  # same batch: graphs reused
    assert model._decoding_cache.callables == captured
    assert torch.equal(again, model.generate(ids[:, :3], max_length=12))
    prompts = [ids[0, :2], ids[1], ids[2, :4]]  # different lengths: state passing into the graph's cache
    assert torch.equal(model.generate(prompts, max_length=12, cg=True), model.generate(prompts, max_length=12))


def test_output_class_without_transformers(monkeypatch):
    import sys

    import ssm.utils.generation as generation
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    monkeypatch.setitem(sys.modules, "transformers.generation", None)
    generation._output_class.cache_clear()
    try:
        out = build("toy").generate(torch.ones(2, 2, dtype=torch.long), max_length=5,
                                    return_dict_in_generate=True, output_scores=True)
    finally:
        generation._output_class.cache_clear()
    assert type(out) is generation.GenerateDecoderOnlyOutput
    assert out.sequences.shape == (2, 5) and len(out.scores) == 3



def test_cache_rows_fill_the_prefix_of_a_longer_kv_cache():
    # A CUDA-graph cache kept from an earlier, longer max_length receives a shorter prefill cache.
    from ssm.utils.decode_runners import _copy_cache_rows
    dst = {0: (torch.randn(3, 16, 2, 4, 8), torch.randn(3, 6, 4))}
    src = {0: (torch.randn(1, 12, 2, 4, 8), torch.randn(1, 6, 4))}
    before = dst[0][0].clone()
    _copy_cache_rows(dst, src, torch.tensor([1]))
    assert torch.equal(dst[0][0][1, :12], src[0][0][0]) and torch.equal(dst[0][0][1, 12:], before[1, 12:])
    assert torch.equal(dst[0][1][1], src[0][1][0])
    assert torch.equal(dst[0][0][[0, 2]], before[[0, 2]])
