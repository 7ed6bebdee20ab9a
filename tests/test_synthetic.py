"""The embedded synthetic data set: determinism, folder layout, caching, and which cues each class needs."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vpnext.data import synthetic
from vpnext.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, ensure_synthetic, generate_scene


def _scenes(count: int, size: int = 64, **kwargs) -> list[tuple[np.ndarray, np.ndarray]]:
    return [generate_scene(np.random.default_rng([7, i]), size, **kwargs) for i in range(count)]


def test_scene_is_deterministic_and_well_formed() -> None:
    image, label = generate_scene(np.random.default_rng(3), 96)
    again, again_label = generate_scene(np.random.default_rng(3), 96)
    other, _ = generate_scene(np.random.default_rng(4), 96)
    assert np.array_equal(image, again) and np.array_equal(label, again_label)
    assert not np.array_equal(image, other)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert label.shape == (96, 96) and label.dtype == np.uint8
    assert set(np.unique(label)) <= set(range(len(SYNTHETIC_CLASSES)))


def test_every_class_occurs() -> None:
    seen = set().union(*(np.unique(label).tolist() for _, label in _scenes(20)))
    assert seen == set(range(len(SYNTHETIC_CLASSES)))
    assert len(SYNTHETIC_PALETTE) == len(SYNTHETIC_CLASSES)


def _load_colour_baseline():
    # The script is not part of the package; load it from its file to test the claim it measures.
    path = Path(__file__).resolve().parents[1] / "scripts" / "colour_baseline.py"
    spec = importlib.util.spec_from_file_location("colour_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_colour_finds_the_textures_but_not_wires_windows_or_signs() -> None:
    # By design the textures come in their own hue families (a cue a small ViT learns in minutes),
    # while wires, windows and signs take any colour: a per-pixel colour classifier must find the
    # first and not the others. A bug painting e.g. every window alike would show up here.
    baseline = _load_colour_baseline()
    num_classes = len(SYNTHETIC_CLASSES)
    train, val = _scenes(50), [generate_scene(np.random.default_rng([8, i]), 64) for i in range(25)]
    for prior in ("uniform", "empirical"):
        table = baseline.fit_colour_classifier(iter(train), num_classes, bins=16, prior=prior)
        per_class, _ = baseline.evaluate(table, iter(val), num_classes, bins=16)
        stripes, dots, wire, window, sign = (SYNTHETIC_CLASSES.index(c) for c in CONTEXT_AND_DETAIL)
        assert per_class[[stripes, dots]].min() > 0.4, (prior, per_class)
        # Measured: wire 0.10, window 0.09, sign 0.03 with the uniform prior (saturated colours
        # stand out a little from the muted background); a colour-coded class scores > 0.5.
        assert per_class[[wire, window, sign]].max() < 0.15, (prior, per_class)


CONTEXT_AND_DETAIL = ("stripes", "dots", "wire", "window", "sign")


def test_windows_sit_in_textures_and_signs_stand_apart() -> None:
    # The context rule: the ring of pixels around a window (beyond wires) is texture, around a sign
    # background. The two look alike; only this tells them apart.
    names = list(SYNTHETIC_CLASSES)
    texture = {names.index("stripes"), names.index("dots")}
    seen = {"window": 0, "sign": 0}
    for _, label in _scenes(30, size=96):
        for cls in ("window", "sign"):
            mask = label == names.index(cls)
            if not mask.any():
                continue
            seen[cls] += 1
            ring = synthetic._grow(mask, 2) & ~mask & (label != names.index("wire"))
            around = set(np.unique(label[ring]).tolist()) - {names.index("window"), names.index("sign")}
            if cls == "window":
                assert around <= texture, around
            else:
                assert around == {names.index("background")}, around
    assert min(seen.values()) > 10


def test_wires_are_thin() -> None:
    wire = SYNTHETIC_CLASSES.index("wire")
    for _, label in _scenes(10, size=96):
        mask = label == wire
        # Eroding a 1.5-3 px line by one pixel on each side leaves (almost) nothing.
        core = ~synthetic._grow(~mask, 2)
        assert mask.sum() > 0 and core.sum() <= 0.05 * mask.sum()


def test_colour_baseline_scores_a_colour_coded_class() -> None:
    # The same classifier does find a class that *is* colour coded, so the test above can fail.
    baseline = _load_colour_baseline()
    recoloured = []
    for image, label in _scenes(40):
        image = image.copy()
        image[label == 1] = (250, 10, 10)
        recoloured.append((image, label))
    table = baseline.fit_colour_classifier(iter(recoloured[:30]), len(SYNTHETIC_CLASSES), 16, "uniform")
    per_class, _ = baseline.evaluate(table, iter(recoloured[30:]), len(SYNTHETIC_CLASSES), 16)
    assert per_class[1] > 0.5


def test_ignore_band_marks_boundaries_only() -> None:
    _, plain = generate_scene(np.random.default_rng(5), 64)
    _, banded = generate_scene(np.random.default_rng(5), 64, ignore_band=1)
    band = banded == 255
    assert band.any() and not (plain == 255).any()
    assert np.array_equal(banded[~band], plain[~band])
    # Every band pixel has a 4-neighbour of another class in the unbanded label.
    padded = np.pad(plain.astype(int), 1, constant_values=-1)
    neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
    differs = np.any([(n != plain) & (n >= 0) for n in neighbours], axis=0)
    assert np.array_equal(band, differs)


def test_ensure_synthetic_writes_the_folder_layout(tmp_path: Path) -> None:
    root = ensure_synthetic(tmp_path, num_train=3, num_val=2, image_size=48, seed=1)
    assert root.parent == tmp_path and root.name.startswith(f"synthetic-v{synthetic.SYNTHETIC_VERSION}-")
    meta = json.loads((root / "meta.json").read_text())
    assert meta["classes"] == list(SYNTHETIC_CLASSES)
    assert meta["palette"] == [list(c) for c in SYNTHETIC_PALETTE]
    assert meta["seed"] == 1 and meta["version"] == synthetic.SYNTHETIC_VERSION
    for split, count in [("train", 3), ("val", 2)]:
        ids = (root / f"{split}.txt").read_text().splitlines()
        assert len(ids) == count == len(set(ids))
        for sample_id in ids:
            image = Image.open(root / "images" / split / f"{sample_id}.png")
            label = Image.open(root / "annotations" / split / f"{sample_id}.png")
            assert image.mode == "RGB" and label.mode == "L"
            assert image.size == label.size == (48, 48)
            assert np.asarray(label).max() < len(SYNTHETIC_CLASSES)
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left behind


def test_ensure_synthetic_is_cached_and_keyed_by_parameters(tmp_path: Path) -> None:
    root = ensure_synthetic(tmp_path, num_train=2, num_val=1, image_size=32)
    stamp = (root / "meta.json").stat().st_mtime_ns
    assert ensure_synthetic(tmp_path, num_train=2, num_val=1, image_size=32) == root
    assert (root / "meta.json").stat().st_mtime_ns == stamp

    bigger = ensure_synthetic(tmp_path, num_train=3, num_val=1, image_size=32)
    assert bigger != root
    # Scene i does not depend on the split size.
    first = "images/train/train_00001.png"
    assert np.array_equal(np.asarray(Image.open(root / first)), np.asarray(Image.open(bigger / first)))
    reseeded = ensure_synthetic(tmp_path, num_train=2, num_val=1, image_size=32, seed=5)
    assert not np.array_equal(np.asarray(Image.open(root / first)), np.asarray(Image.open(reseeded / first)))


def test_default_root_comes_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPNEXT_CACHE", str(tmp_path / "cache"))
    root = ensure_synthetic(num_train=1, num_val=1, image_size=32)
    assert root.parent == tmp_path / "cache"


def test_losing_the_rename_race_keeps_the_winner(tmp_path: Path) -> None:
    winner = tmp_path / "final"
    winner.mkdir()
    (winner / "meta.json").write_text("{}")
    (winner / "marker").write_text("first")
    loser = tmp_path / "tmp"
    loser.mkdir()
    (loser / "meta.json").write_text("{}")
    synthetic._publish(loser, winner)
    assert not loser.exists()
    assert (winner / "marker").read_text() == "first"


def test_half_written_target_is_not_accepted(tmp_path: Path) -> None:
    blocked = tmp_path / "final"
    blocked.mkdir()
    (blocked / "stray").write_text("")  # non-empty, no meta.json: not a finished data set
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with pytest.raises(OSError):
        synthetic._publish(tmp, blocked)
    assert os.listdir(blocked) == ["stray"]
