"""Augmentation: keep-ratio rescale, cat_max_ratio crop, flip, padding, normalisation, seeding."""

from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from vpnext.data import FolderDataset, seg_collate
from vpnext.data.transforms import (
    IMAGENET_MEAN,
    CatMaxRatioCrop,
    RandomResize,
    build_eval_transform,
    build_train_transform,
    class_ratio_ok,
    keep_ratio_size,
    photometric_distortion,
)
from vpnext.data.workers import seed_worker


def test_keep_ratio_size_matches_mmcv_rule() -> None:
    # Pascal Context image 375x500 at (2048, 520): short side reaches 520 first.
    assert keep_ratio_size(375, 500, (2048, 520)) == (520, 693)
    # Cityscapes 1024x2048 at (2048, 1024): unchanged.
    assert keep_ratio_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    # A very wide image is bounded by the long side instead: 100x1000 -> long 2048.
    assert keep_ratio_size(100, 1000, (2048, 512)) == (205, 2048)
    assert keep_ratio_size(100, 1000, (512, 2048)) == (205, 2048)  # order of the pair is irrelevant


def test_random_resize_scales_base_scale_by_ratio() -> None:
    image = np.zeros((375, 500, 3), np.uint8)
    label = np.zeros((375, 500), np.uint8)
    for ratio, expected in ((0.5, (260, 347)), (2.0, (1040, 1387))):
        out = RandomResize((2048, 520), (ratio, ratio))(image=image, mask=label)
        assert out["image"].shape[:2] == expected and out["mask"].shape == expected
    out = RandomResize(None, (1.5, 1.5))(image=image, mask=label)
    assert out["image"].shape[:2] == (563, 750)
    sizes = {RandomResize((2048, 520), (0.5, 2.0))(image=image)["image"].shape[0] for _ in range(20)}
    assert len(sizes) > 10 and min(sizes) >= 260 and max(sizes) <= 1040


def test_random_resize_keeps_label_values() -> None:
    label = np.random.default_rng(0).choice(np.array([0, 3, 255], np.uint8), size=(37, 53))
    out = RandomResize(None, (1.7, 1.7))(image=np.zeros((37, 53, 3), np.uint8), mask=label)
    assert set(np.unique(out["mask"]).tolist()) == {0, 3, 255}  # nearest: no blended values


def test_class_ratio_ok_ignores_255_and_needs_two_classes() -> None:
    label = np.array([0] * 60 + [1] * 15 + [255] * 25, np.uint8)
    assert not class_ratio_ok(label, 0.75)  # class 0 is 60/75 = 80 % of the valid pixels
    assert class_ratio_ok(label, 0.85)
    assert not class_ratio_ok(np.zeros(100, np.uint8), 0.75)  # one class only
    assert not class_ratio_ok(np.full(100, 255, np.uint8), 0.75)  # nothing valid
    assert class_ratio_ok(np.array([0] * 50 + [1] * 50, np.uint8), 0.75)


def _share_ok(crop: np.ndarray) -> bool:
    counts = np.bincount(crop.ravel())
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < 0.75


def test_cat_max_ratio_crop_redraws_dominated_crops() -> None:
    # Left half class 0, right half class 1; a 50x50 crop passes only if x0 in 13..37 (~49 %).
    label = np.zeros((100, 100), np.uint8)
    label[:, 50:] = 1
    image = np.zeros((100, 100, 3), np.uint8)
    with_check = A.Compose([CatMaxRatioCrop(50, 50, cat_max_ratio=0.75)], seed=1)
    without = A.Compose([CatMaxRatioCrop(50, 50, cat_max_ratio=1.0)], seed=1)
    ok_with = np.mean([_share_ok(with_check(image=image, mask=label)["mask"]) for _ in range(300)])
    ok_without = np.mean([_share_ok(without(image=image, mask=label)["mask"]) for _ in range(300)])
    assert ok_with > 0.98  # 11 draws fail together with probability ~0.51**11
    assert 0.35 < ok_without < 0.65


def test_cat_max_ratio_crop_gives_up_after_max_tries() -> None:
    label = np.zeros((60, 80), np.uint8)  # no crop can pass
    out = CatMaxRatioCrop(32, 48)(image=np.zeros((60, 80, 3), np.uint8), mask=label)
    assert out["image"].shape == (32, 48, 3) and out["mask"].shape == (32, 48)


def test_crop_image_and_label_stay_aligned() -> None:
    yy, xx = np.mgrid[0:90, 0:120]
    image = np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8)
    label = ((yy // 10 + xx // 10) % 4).astype(np.uint8)
    out = A.Compose([CatMaxRatioCrop(40, 40)], seed=3)(image=image, mask=label)
    y0, x0 = int(out["image"][0, 0, 0]), int(out["image"][0, 0, 1])
    np.testing.assert_array_equal(out["mask"], label[y0 : y0 + 40, x0 : x0 + 40])


def test_train_pipeline_pads_small_images_with_0_and_255() -> None:
    image = np.full((30, 20, 3), 200, np.uint8)
    label = np.ones((30, 20), np.uint8)
    t = build_train_transform(
        (64, 48), None, ratio_range=(1.0, 1.0), photometric=False, flip_prob=0.0, seed=0
    )
    out = t(image=image, mask=label)
    assert out["image"].shape == (64, 48, 3) and out["image"].dtype == np.float32
    assert out["mask"].shape == (64, 48)
    assert (out["mask"][:30, :20] == 1).all()
    assert (out["mask"][30:] == 255).all() and (out["mask"][:, 20:] == 255).all()
    assert (out["image"][30:] == 0).all() and (out["image"][:, 20:] == 0).all()
    expected = (200 / 255 - np.array(IMAGENET_MEAN)) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out["image"][0, 0], expected, rtol=1e-5)


def test_train_pipeline_flip_moves_label_with_image() -> None:
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    label = np.tile(np.arange(32, dtype=np.uint8) % 5, (32, 1))
    t = build_train_transform((32, 32), None, ratio_range=(1.0, 1.0), photometric=False, flip_prob=1.0)
    out = t(image=image, mask=label)
    np.testing.assert_array_equal(out["mask"], label[:, ::-1])
    ref = build_eval_transform(None)(image=image[:, ::-1].copy())["image"]
    np.testing.assert_allclose(out["image"], ref, atol=1e-6)


def test_photometric_distortion_changes_image_only() -> None:
    image = np.random.default_rng(0).integers(40, 216, (24, 24, 3), dtype=np.uint8)
    label = np.ones((24, 24), np.uint8)
    t = photometric_distortion(p=1.0)
    out = t(image=image, mask=label)
    assert out["image"].dtype == np.uint8 and out["image"].shape == image.shape
    assert np.abs(out["image"].astype(int) - image).mean() > 1.0
    np.testing.assert_array_equal(out["mask"], label)


@pytest.mark.parametrize("strength", ["mmseg", "strong"])
def test_strong_photometric_tints_and_brightens_further(strength: str) -> None:
    """mmseg's steps keep a gray frame gray; the strong ones also shift white balance, and their
    brightness step reaches +-64 instead of +-32."""
    gray = np.full((8, 8, 3), 128, np.uint8)
    t = photometric_distortion(p=1.0, strength=strength)  # type: ignore[arg-type]
    t.set_random_seed(0)
    tinted = [np.ptp(t(image=gray)["image"].reshape(-1, 3).mean(0)) > 2 for _ in range(100)]
    brightness = t.transforms[0]
    assert isinstance(brightness, A.RandomBrightnessContrast)
    if strength == "mmseg":
        assert not any(tinted)
        assert brightness.brightness_limit == pytest.approx((-32 / 255, 32 / 255))
    else:
        assert sum(tinted) > 25
        assert brightness.brightness_limit == pytest.approx((-64 / 255, 64 / 255))
        assert any(isinstance(step, A.RandomGamma) for step in t.transforms)


def test_eval_transform_resizes_image_only() -> None:
    t = build_eval_transform((2048, 512))
    out = t(image=np.zeros((100, 200, 3), np.uint8))
    assert out["image"].shape == (512, 1024, 3)
    assert build_eval_transform(None)(image=np.zeros((7, 9, 3), np.uint8))["image"].shape == (7, 9, 3)


def test_workers_draw_different_augmentations(tmp_path: Path) -> None:
    """Forked workers must not replay one albumentations random stream."""
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "annotations" / "train").mkdir(parents=True)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    label = np.random.default_rng(1).integers(0, 3, (64, 64), dtype=np.uint8)
    for i in range(4):
        Image.fromarray(image).save(tmp_path / "images" / "train" / f"{i}.png")
        Image.fromarray(label).save(tmp_path / "annotations" / "train" / f"{i}.png")
    (tmp_path / "train.txt").write_text("0\n1\n2\n3\n")
    (tmp_path / "meta.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    t = build_train_transform((32, 32), None, photometric=False, seed=0)
    ds = FolderDataset(tmp_path, transform=t)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=1, num_workers=2, collate_fn=seg_collate, worker_init_fn=seed_worker
    )
    first = [b["label"] for b in loader][:2]  # sample 0 from worker 0, sample 1 from worker 1
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize("seed", [0, 1])
def test_pipeline_seed_is_reproducible(seed: int) -> None:
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    label = np.random.default_rng(1).integers(0, 4, (50, 70), dtype=np.uint8)
    a = build_train_transform((32, 32), None, seed=seed)(image=image, mask=label)
    b = build_train_transform((32, 32), None, seed=seed)(image=image, mask=label)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
