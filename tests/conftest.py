"""Shared fixtures: tiny models and the location of ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import SHARED


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` (``make test``), each worker computes on one thread: N workers share
    the machine's cores instead of each taking all of them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # the processes the tests start inherit it


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present next to the repository")
    return SHARED
