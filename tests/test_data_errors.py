"""Bad data on disk gives one DatasetError that names the file and the problem, never a skip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import make_folder
from vpnext.data import CamVidDataset, DatasetError, FolderDataset, SegDataModule, seg_collate
from vpnext.data.transforms import build_eval_transform


def raises_naming(path: Path | str, match: str, fn, *args, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError, match=match) as info:
        fn(*args, **kwargs)
    assert str(path) in str(info.value), str(info.value)
    return info.value


def test_valid_fixture_passes(tmp_path: Path) -> None:
    ds = FolderDataset(make_folder(tmp_path), "train", check_files="decode")
    assert len(ds) == 3


def test_missing_root(tmp_path: Path) -> None:
    raises_naming(tmp_path / "nope", "does not exist", FolderDataset, tmp_path / "nope")
    raises_naming(tmp_path / "nope", "does not exist", CamVidDataset, tmp_path / "nope")


def test_missing_split_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    raises_naming(root / "val.txt", "split file is missing", FolderDataset, root, "val")


def test_missing_meta_json_at_datamodule_construction(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    (root / "meta.json").unlink()
    raises_naming(root / "meta.json", "meta.json", SegDataModule, "folder", root=str(root))


def test_missing_image_and_label_are_all_listed(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    (root / "images" / "train" / "a.png").unlink()
    (root / "annotations" / "train" / "c.png").unlink()
    err = raises_naming(root / "images" / "train" / "a.png", "2 problem", FolderDataset, root)
    assert str(root / "annotations" / "train" / "c.png") in str(err)
    assert "b.png" not in str(err)


def test_size_mismatch(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    label = root / "annotations" / "train" / "b.png"
    Image.fromarray(np.zeros((40, 59), np.uint8)).save(label)
    raises_naming(label, "differs from image", FolderDataset, root)


def test_rgb_label(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    label = root / "annotations" / "train" / "a.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(label)
    raises_naming(label, "mode RGB", FolderDataset, root)
    ds = FolderDataset(root, check_files="none")
    raises_naming(label, "mode RGB", ds.__getitem__, 0)


def test_label_value_out_of_range_is_named_on_load(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    label = root / "annotations" / "train" / "b.png"
    bad = np.zeros((40, 60), np.uint8)
    bad[5, 5] = 7  # 3 classes: 7 is neither a class nor 255
    Image.fromarray(bad).save(label)
    ds = FolderDataset(root)  # a header scan cannot see pixel values
    ds[0]
    raises_naming(label, r"values \[7\]", ds.__getitem__, 1)
    raises_naming(label, r"values \[7\]", FolderDataset, root, check_files="decode")


def test_unreadable_image(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    image = root / "images" / "train" / "c.png"
    image.write_bytes(b"this is not a png")
    raises_naming(image, "cannot read image", FolderDataset, root)
    ds = FolderDataset(root, check_files="none")
    raises_naming(image, "cannot decode image", ds.__getitem__, 2)


def test_truncated_image(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    image = root / "images" / "train" / "a.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    ds = FolderDataset(root)  # header scan passes
    raises_naming(image, "cannot decode image", ds.__getitem__, 0)
    raises_naming(image, "cannot decode image", FolderDataset, root, check_files="decode")


def test_datamodule_setup_fails_before_training(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    make_folder(root, ids=("v",), split="val")
    (root / "annotations" / "val" / "v.png").unlink()
    dm = SegDataModule("folder", root=str(root), num_workers=0)
    raises_naming(root / "annotations" / "val" / "v.png", "missing", dm.setup, "fit")


def test_camvid_bad_list_line(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("/SegNet/CamVid/train/x.png\n")
    raises_naming(tmp_path / "train.txt", "expected '<image path> <label path>'", CamVidDataset, tmp_path)


def test_camvid_entry_resolves_under_root(tmp_path: Path) -> None:
    """An entry pointing at a missing file is reported at its resolved place under root."""
    (tmp_path / "train.txt").write_text("/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png\n")
    err = raises_naming(tmp_path / "train" / "x.png", "missing", CamVidDataset, tmp_path)
    assert "/SegNet/" not in str(err)


def test_collate_rejects_mixed_batches() -> None:
    labelled = {"image": torch.zeros(3, 4, 4), "label": torch.zeros(4, 4, dtype=torch.int64), "meta": {}}
    unlabelled = {"image": torch.zeros(3, 4, 4), "meta": {}}
    with pytest.raises(ValueError, match="labelled and unlabelled"):
        seg_collate([labelled, unlabelled])


def test_eval_dataset_error_survives_worker_processes(tmp_path: Path) -> None:
    """A DatasetError raised in a DataLoader worker reaches the main process with the file name."""
    root = make_folder(tmp_path)
    label = root / "annotations" / "train" / "a.png"
    bad = np.full((40, 60), 9, np.uint8)
    Image.fromarray(bad).save(label)
    ds = FolderDataset(root, transform=build_eval_transform(None))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=seg_collate)
    raises_naming(label, "outside the 3 classes", lambda: list(loader))
