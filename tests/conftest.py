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


#: Test files that start several processes (DDP ranks, torchrun agents, a sweep and its runs). Under
#: ``make test`` they form one work unit, run one after another by one worker while the other worker
#: takes the single-process files: two multi-process jobs at once would put five processes on the
#: two cores. Together they take about as long as all the other files.
MULTI_PROCESS = (
    "test_distributed_failures.py",
    "test_ddp.py",
    "test_multinode.py",
    "test_sweep_resume.py",
    "test_resume.py",
)
#: The longest single-process files, longest first (``pytest --durations=0``, 2026-12): handed out
#: first, so that no worker picks up a long file at the end while the other sits idle.
LONGEST_FIRST = (
    "test_export.py",
    "test_checkpoints.py",
    "test_inference_api.py",
    "test_flops_cmd.py",
    "test_vpnext.py",
    "test_data_datasets.py",
    "test_bad_inputs.py",
    "test_cli.py",
    "test_benchmark.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The multi-process files first, then the files longest first (a stable sort: tests keep their
    order within a file). ``make test`` passes ``--no-loadscope-reorder`` so xdist keeps this order
    instead of sorting the files by their number of tests."""
    order = {name: i for i, name in enumerate((*MULTI_PROCESS, *LONGEST_FIRST))}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))


def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN201, ANN001
    """``--dist loadfile`` with the multi-process files as one unit (xdist's ``loadgroup`` would do it
    with markers, but pytest 9 no longer reports the group suffix it adds to test ids)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "multi_process" if Path(path).name in MULTI_PROCESS else path

    return FileScheduling(config, log)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present next to the repository")
    return SHARED
