"""``--data.cache``: frames decoded once into memory give the samples the files give, and are refused
when they would not fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import make_folder
from vpnext.data.base import read_image
from vpnext.data.datamodule import SegDataModule
from vpnext.errors import UserError
from vpnext.memory import available_bytes

IDS = tuple(f"f{i}" for i in range(6))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_folder(tmp_path_factory.mktemp("folder"), IDS, "train")
    return make_folder(root, IDS[:3], "val")


def _module(root: Path, cache: bool, workers: int = 0) -> SegDataModule:
    torch.manual_seed(0)  # the augmentation seed is drawn from torch's RNG in setup
    dm = SegDataModule(
        "folder",
        root=str(root),
        crop_size=(32, 48),
        train_scale=(60, 40),
        photometric="strong",
        mix="classmix",
        batch_size=2,
        num_workers=workers,
        persistent_workers=False,
        cache=cache,
    )
    dm.setup("fit")
    return dm


def _batches(dm: SegDataModule, epochs: int = 2) -> list[dict]:
    loader, out = dm.train_dataloader(), []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out += list(loader)
    return out


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "one-worker"])
def test_kept_frames_give_the_samples_the_files_give(folder: Path, workers: int) -> None:
    files, kept = _module(folder, cache=False), _module(folder, cache=True, workers=workers)
    assert kept.train_set.decoded and kept.val_set.decoded and not files.train_set.decoded
    expected, got = _batches(files), _batches(kept)
    assert len(got) == len(expected) == 6
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    for i in range(len(files.val_set)):
        a, b = files.val_set[i], kept.val_set[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_kept_frames_are_read_only_and_stay_as_decoded(folder: Path) -> None:
    dm = _module(folder, cache=True)
    _batches(dm, epochs=3)  # rescale, crop, flip, photometric and ClassMix on the kept pixels
    for sample in dm.train_set.samples:
        image, label = dm.train_set._decode(sample)
        assert not image.flags.writeable and not label.flags.writeable
        assert np.array_equal(image, read_image(sample.image_path))


def test_a_cache_that_would_not_fit_is_refused(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need = 9 * 40 * 60 * 4  # 6 train + 3 val frames of 40x60: RGB + label bytes
    monkeypatch.setattr("vpnext.data.datamodule.available_bytes", lambda: 2 * need - 2)
    with pytest.raises(UserError, match=r"--data\.cache=true: the 9 decoded frames .* leave the cache off"):
        _module(folder, cache=True)
    monkeypatch.setattr("vpnext.data.datamodule.available_bytes", lambda: 2 * need)
    assert _module(folder, cache=True).train_set.decoded


def test_available_memory_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   12345678 kB\n")
    assert available_bytes(str(meminfo)) == 12345678 * 1024
    meminfo.write_text("MemTotal:       24000000 kB\n")
    assert available_bytes(str(meminfo)) is None
    assert available_bytes(str(tmp_path / "absent")) is None
