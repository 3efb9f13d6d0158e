"""Shared pieces of the module/model tests: the inference-cache object, comparisons, decoding loops."""
import torch

from ssm.utils.generation import InferenceParams  # noqa: F401  (re-exported for the tests)


def assert_close(actual, expected, tol=2e-4):
    """float32 model outputs: ||a - e|| / ||e|| and elementwise, relative to the output's scale."""
    assert not torch.isnan(actual).any(), "NaN in output"
    scale = expected.abs().max().clamp(min=1e-6)
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale.item())


def run_in_pieces(layer, x, pieces, **kwargs):
    """Feed x (B, L, D) to ``layer`` through one InferenceParams in the given piece lengths
    (a piece of 1 after the start takes the step path); returns the concatenated outputs and params."""
    params = InferenceParams(max_seqlen=x.shape[1], max_batch_size=x.shape[0])
    outs, start = [], 0
    for n in pieces:
        outs.append(layer(x[:, start:start + n], inference_params=params, **kwargs))
        params.seqlen_offset += n
        start += n
    assert start == x.shape[1]
    return torch.cat(outs, dim=1), params


def grads_everywhere(module):
    """Names of parameters that got no (or a non-finite, or all-zero) gradient."""
    bad = []
    for name, p in module.named_parameters():
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0:
            bad.append(name)
    return bad
