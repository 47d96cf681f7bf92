"""Shared test settings: small thread pools so parallel test runs stay fast on 2 cores."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SYNTHBRAIN_HOME", os.path.join(os.path.dirname(__file__), ".cache-home"))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_threads():
    """One intra-op thread per test process: tests are tiny and run side by side."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
