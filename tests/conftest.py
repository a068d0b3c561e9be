"""Suite-wide hooks. torch is imported only where a test needs it: the app's tests run without it
(the server never imports torch), and importing it costs every app-only run a few seconds."""

import os
import sys

import pytest

# Each test traces afresh: a cached estimate would hide what a test changes in the code under it
# (a monkeypatched step), and one test's trace must not answer another's. The cache's own tests
# point WTACRS_TRACE_CACHE at a folder of their own. Set here, so child processes inherit it.
os.environ["WTACRS_TRACE_CACHE"] = "off"

# Under pytest-xdist (the README's command runs two workers) each worker gets its share of the cores,
# set before any test module imports torch: two workers of two threads each on a 2-core machine
# would oversubscribe it, and the latency tests of the server would pay for it.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_share)


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by -m
def pytest_collection_modifyitems(config, items):
    from tests.tiers import mark

    mark(items)
    cuda_items = [item for item in items if "cuda" in item.keywords]
    if not cuda_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (none visible to torch)")
        for item in cuda_items:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    # a test module that uses torch imported it when it was collected, before any fixture runs
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(0)
    yield
