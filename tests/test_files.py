"""Atomic writes (checkpoints, results.json) and the plain-value helpers every layer shares."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from vpnext.files import atomic_write, atomic_write_json
from vpnext.plain import jsonable, optional_pair, pair


def test_atomic_write_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "results.json"
    atomic_write_json(path, {"mIoU": 0.5})
    atomic_write_json(path, {"mIoU": 0.6, "steps": [1, 2]})
    assert json.loads(path.read_text()) == {"mIoU": 0.6, "steps": [1, 2]}
    assert path.read_text().endswith("\n") and oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.ckpt"
    atomic_write(path, b"old")

    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_jsonable() -> None:
    value = {1: (1.5, math.nan, math.inf), "p": Path("a/b"), "n": None, "b": True, "o": object}
    assert jsonable(value) == {"1": [1.5, None, None], "p": "a/b", "n": None, "b": True, "o": str(object)}
    json.dumps(jsonable(value), allow_nan=False)


def test_pair() -> None:
    assert pair(5) == (5, 5) and pair([3, "4"]) == (3, 4) and pair((2, 1)) == (2, 1)
    assert optional_pair(None) is None and optional_pair(7) == (7, 7)
    with pytest.raises(ValueError, match="height, width"):
        pair([1, 2, 3])
