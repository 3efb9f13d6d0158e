import os
import random

import pytest
import torch
import torch._inductor.config

import ssm.ops._kernels as kernels


def pytest_configure(config):
    # Compiled graphs are never reused across runs: the inductor cache does not see changes to
    # a custom op's fake implementation, so a stale entry could hide (or fake) a bug.
    torch._inductor.config.fx_graph_cache = False
    # Every kernel output starts as NaN: an element a kernel forgets to write fails the test.
    kernels.POISON_OUTPUTS = True
    # Small test shapes still run the kernels' multithreaded paths (benchmarks keep the default).
    kernels.PARALLEL_MIN_WORK = 0


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """Fresh random inputs every run; the seed is printed when a test fails (SSM_TEST_SEED replays it)."""
    seed = int(os.environ.get("SSM_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        seeds = [v for k, v in item.user_properties if k == "seed"]
        if seeds:
            report.sections.append(("seed", f"SSM_TEST_SEED={seeds[0]}"))


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") and not has_gpu:  # the marker, not a name match
            item.add_marker(skip)
