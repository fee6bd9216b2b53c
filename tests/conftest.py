"""GPU tests carry @pytest.mark.gpu and skip cleanly where torch sees no CUDA device, and
under pytest-xdist's worker processes: the persistent kernel takes every SM, so two
processes' launches would share the card (run them alone: pytest -m gpu tests/)."""

import os

import pytest

# The suite runs on two processes (pytest-xdist, `--dist worksteal`, in the README's test
# command), each taking tests in collection order and stealing the other's when done: the
# files that take longest (nvcc on real configs, ~7 minutes of test_real_configs.py) go
# first, so that no process is left running one of their tests alone at the end.
SLOW_FIRST = ("test_real_configs.py", "test_fp8.py", "test_pipeline.py", "test_prefill_sass.py")


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    n = len(SLOW_FIRST)
    items.sort(key=lambda it: SLOW_FIRST.index(it.path.name) if it.path.name in SLOW_FIRST else n)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        skip = pytest.mark.skip(reason="GPU tests run in one process: pytest -m gpu tests/")
    elif _has_gpu():
        return
    else:
        skip = pytest.mark.skip(reason="needs a CUDA GPU (run through the device tool)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
