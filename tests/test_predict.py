"""``vpnext predict --ckpt_path CKPT INPUT...``: label PNGs and overlays for any image, nothing lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import write_small_checkpoint
from vpnext.cli import main
from vpnext.inference import Segmenter
from vpnext.inference.pictures import colorize, overlay, palette_png
from vpnext.inference.predict import collect_inputs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained checkpoint with non-zero deformable offsets (what is written is what matters)."""
    return write_small_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Odd sizes, grayscale, RGBA, 16-bit, a.jpg beside a.png, nested folders, one broken file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 41, 3), dtype=np.uint8)).save(root / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (33, 29), dtype=np.uint8), "L").save(
        root / "sub" / "deeper" / "g.png"
    )
    Image.fromarray(rng.integers(0, 256, (30, 45, 4), dtype=np.uint8), "RGBA").save(root / "sub" / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (26, 31), dtype=np.uint16)).save(root / "sub" / "wide.png")
    (root / "sub" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "notes.txt").write_text("not an image")
    return root


def _run(*args: str) -> int:
    return main(["predict", *args, "--no_progress"])


def test_every_kind_of_image_gets_a_label_png_and_an_overlay(
    images: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert _run(str(images), "--ckpt_path", str(checkpoint), "--output", str(out)) == 1  # one skipped
    err = capsys.readouterr().err
    assert "5 written, 0 kept" in err and "1 skipped" in err and "broken.png" in err
    assert str(out.resolve()) in err
    segmenter = Segmenter.from_checkpoint(checkpoint)
    expected = ["a.jpg", "a.png", "sub/deeper/g.png", "sub/rgba.png", "sub/wide.png"]
    labels = sorted(str(p.relative_to(out / "labels")) for p in (out / "labels").rglob("*.png"))
    assert labels == [f"{name}.png" for name in expected]
    for name in expected:
        source = images / name
        written = Image.open(out / "labels" / f"{name}.png")
        assert written.mode == "P"
        values = np.asarray(written)
        np.testing.assert_array_equal(values, segmenter.predict(source))  # values are the train ids
        shown = np.asarray(Image.open(out / "overlays" / f"{name}.png"))
        assert shown.shape == (*values.shape, 3)


def test_existing_outputs_are_kept_unless_overwrite(
    images: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    one = images / "a.png"
    assert _run(str(one), "--ckpt_path", str(checkpoint), "--output", str(out)) == 0
    label = out / "labels" / "a.png.png"
    label.write_bytes(b"edited by hand")
    assert _run(str(one), "--ckpt_path", str(checkpoint), "--output", str(out)) == 0
    assert "0 written, 1 kept" in capsys.readouterr().err and label.read_bytes() == b"edited by hand"
    assert _run(str(one), "--ckpt_path", str(checkpoint), "--output", str(out), "--overwrite") == 0
    assert "1 written" in capsys.readouterr().err and label.read_bytes() != b"edited by hand"


def test_strict_stops_at_an_unreadable_input(images: Path, checkpoint: Path, tmp_path: Path, capsys) -> None:
    args = [str(images / "sub" / "broken.png"), str(images / "a.png")]
    assert _run(*args, "--ckpt_path", str(checkpoint), "--output", str(tmp_path / "o"), "--strict") == 1
    assert "broken.png" in capsys.readouterr().err
    assert not (tmp_path / "o" / "labels" / "a.png.png").exists()


def test_probabilities_and_lists_with_colliding_names(images: Path, checkpoint: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(other / "a.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{images / 'a.png'}\n\n{other / 'a.png'}\n")
    out = tmp_path / "out"
    assert _run(f"@{listing}", "--ckpt_path", str(checkpoint), "--output", str(out), "--probs") == 0
    first, second = out / "labels" / "a.png.png", out / "labels" / "a.png-1.png"
    assert np.asarray(Image.open(first)).shape == (37, 53) and np.asarray(Image.open(second)).shape == (
        20,
        24,
    )
    probs = np.load(out / "probs" / "a.png.npy")
    expected = Segmenter.from_checkpoint(checkpoint).predict_proba(images / "a.png")
    assert probs.dtype == np.float16 and probs.shape == expected.shape
    np.testing.assert_allclose(probs.astype(np.float32), expected, atol=1e-3)


def test_missing_inputs_are_reported(tmp_path: Path) -> None:
    items, missing = collect_inputs([str(tmp_path / "nope.png"), f"@{tmp_path / 'nolist.txt'}"])
    assert items == [] and len(missing) == 2
    assert any("nope.png: no such file" in m for m in missing)
    assert any("list file not found" in m for m in missing)


def test_palette_png_round_trip_and_overlay(tmp_path: Path) -> None:
    palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (10, 20, 30)]
    labels = np.random.default_rng(3).integers(0, 4, (9, 13))
    palette_png(labels, palette).save(tmp_path / "l.png")
    back = Image.open(tmp_path / "l.png")
    np.testing.assert_array_equal(np.asarray(back), labels)
    np.testing.assert_array_equal(np.asarray(back.convert("RGB")), colorize(labels, palette))
    image = np.full((9, 13, 3), 100, dtype=np.uint8)
    blended = overlay(image, labels, palette, alpha=0.5)
    np.testing.assert_array_equal(
        blended[labels == 1], np.array([[178, 50, 50]]).repeat((labels == 1).sum(), 0)
    )
    with pytest.raises(ValueError, match="0-255"):
        palette_png(np.full((2, 2), 300), palette)


def test_lightning_options_keep_lightnings_predict_loop() -> None:
    from vpnext.cli.main import _is_image_predict

    assert _is_image_predict(["predict", "--ckpt_path", "c.ckpt", "images/"])
    assert not _is_image_predict(["predict", "--config", "run/config.yaml", "--ckpt_path", "c.ckpt"])
    assert not _is_image_predict(["predict", "--trainer.accelerator=cpu", "--data.predict_dir=images"])
    assert not _is_image_predict(["validate", "--ckpt_path", "c.ckpt"])
