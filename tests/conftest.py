"""Shared fixtures: tiny models and the location of ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import SHARED


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present next to the repository")
    return SHARED
