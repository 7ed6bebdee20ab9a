"""Label preparation: exact conversion tables, idempotence, originals untouched."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vpnext.data import DatasetError
from vpnext.data.prepare import main, prepare

COCO_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
# Official Cityscapes labelId -> trainId for the 19 evaluated classes; everything else -> 255.
CITY = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
        27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


def write_label(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)
    return path


def coco_tree(root: Path) -> list[Path]:
    values = np.array([*range(182), 255] * 2, np.uint8).reshape(6, 61)  # every raw id, twice
    return [
        write_label(root / "annotations" / "train2017" / "000000000009.png", values),
        write_label(root / "annotations" / "val2017" / "000000000139.png", values[::-1]),
    ]


def test_coco_stuff_table_pixel_by_pixel(tmp_path: Path) -> None:
    srcs = coco_tree(tmp_path)
    assert prepare("coco_stuff", tmp_path) == 2
    raw = np.asarray(Image.open(srcs[0]))
    out = np.asarray(Image.open(srcs[0].with_name("000000000009_labelTrainIds.png")))
    used = [r for r in range(182) if r not in COCO_UNUSED]
    assert len(used) == 171
    for r in range(256):
        if (raw == r).any():
            expected = used.index(r) if r in used else 255
            assert (out[raw == r] == expected).all(), r
    assert out.max() == 255 and sorted(set(out.ravel().tolist()) - {255}) == list(range(171))


def test_prepare_is_idempotent_and_keeps_originals(tmp_path: Path) -> None:
    srcs = coco_tree(tmp_path)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in srcs}
    assert prepare("coco_stuff", tmp_path) == 2
    outs = sorted(tmp_path.rglob("*_labelTrainIds.png"))
    stamps = [p.stat().st_mtime_ns for p in outs]
    assert prepare("coco_stuff", tmp_path) == 0  # up to date: nothing written
    assert [p.stat().st_mtime_ns for p in outs] == stamps
    assert sorted(tmp_path.rglob("*_labelTrainIds.png")) == outs  # outputs are never re-converted
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in srcs} == before
    assert not list(tmp_path.rglob(".*.tmp"))
    # A source newer than its output is converted again, the other one is left alone.
    newer = srcs[1].stat().st_mtime + 10
    os.utime(srcs[1], (newer, newer))
    assert prepare("coco_stuff", tmp_path) == 1


def test_cityscapes_table_pixel_by_pixel(tmp_path: Path) -> None:
    values = np.array([*range(34), 255] * 4, np.uint8).reshape(4, 35)
    src = write_label(
        tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png", values
    )
    write_label(src.with_name("lindau_000000_000019_gtFine_instanceIds.png"), values)  # not a source
    assert prepare("cityscapes", tmp_path) == 1
    out = np.asarray(Image.open(src.with_name("lindau_000000_000019_gtFine_labelTrainIds.png")))
    expected = np.vectorize(lambda v: CITY.get(int(v), 255))(values)
    np.testing.assert_array_equal(out, expected)
    assert prepare("cityscapes", tmp_path) == 0


def test_invalid_source_values_are_named(tmp_path: Path) -> None:
    src = write_label(tmp_path / "annotations" / "val2017" / "x.png", np.full((4, 4), 200))
    with pytest.raises(DatasetError, match=r"values \[200\]") as info:
        prepare("coco_stuff", tmp_path)
    assert str(src) in str(info.value)
    assert not src.with_name("x_labelTrainIds.png").exists()


def test_parallel_conversion(tmp_path: Path) -> None:
    coco_tree(tmp_path)
    assert prepare("coco_stuff", tmp_path, workers=2) == 2
    assert prepare("coco_stuff", tmp_path, workers=2) == 0


def test_datasets_without_conversion(tmp_path: Path) -> None:
    assert prepare("camvid", tmp_path) == 0
    with pytest.raises(ValueError, match="docs/datasets.md"):
        prepare("pascal_context", tmp_path)
    with pytest.raises(DatasetError, match="gtFine"):
        prepare("cityscapes", tmp_path)


def test_main_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    coco_tree(tmp_path)
    assert main(["coco_stuff", "--root", str(tmp_path)]) == 0
    assert "wrote 2 file(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["cityscapes", "--root", str(tmp_path / "missing")])
    assert info.value.code == 2
    assert "missing" in capsys.readouterr().err
