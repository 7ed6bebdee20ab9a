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


#: The longest test files, longest first (measured with ``pytest --durations=0``, 2026-12). ``make
#: test`` hands whole files to its workers in collection order; starting with the long ones keeps a
#: worker from picking up a 40-second file at the end while the other sits idle.
LONGEST_FIRST = (
    "test_ddp.py",
    "test_distributed_failures.py",
    "test_multinode.py",
    "test_export.py",
    "test_sweep_resume.py",
    "test_flops_cmd.py",
    "test_resume.py",
    "test_data_datasets.py",
    "test_checkpoints.py",
    "test_inference_api.py",
    "test_bad_inputs.py",
    "test_vpnext.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the collected files longest first (a stable sort: tests keep their order in a file)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present next to the repository")
    return SHARED
