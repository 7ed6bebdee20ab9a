"""The Python inference API: ``Segmenter.from_checkpoint(path).predict(image)`` on a trained checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import SMALL_RUN_ARGS, only_run_dir
from vpnext.checkpoint_io import CorruptCheckpointError
from vpnext.cli import main
from vpnext.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE
from vpnext.evaluation import jaccard_index
from vpnext.inference import Segmenter, to_rgb

#: The tiny run evaluates 64x64 images resized to 60x60 (test scale) with a 48-pixel sliding window,
#: so the API has to reproduce the resize, the window and the normalisation of the checkpoint.
PROTOCOL_ARGS = ["--data.test_scale=[80, 60]", "--data.slide_crop=48", "--data.slide_stride=32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    data = tmp_path_factory.mktemp("data")
    common = [*SMALL_RUN_ARGS, *PROTOCOL_ARGS, f"--data.root={data}", f"--run.root={root}", "--run.name=api"]
    assert main(["fit", *common]) == 0
    run = only_run_dir(root / "api", "_fit")
    ckpt = run / "checkpoints" / "last.ckpt"
    assert main(["validate", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt)]) == 0
    assert main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt)]) == 0
    (val_dir,) = {
        p.parent for p in data.rglob("*") if p.parent.name == "val" and p.parent.parent.name == "images"
    }
    return {
        "ckpt": ckpt,
        "validate": only_run_dir(root / "api", "_validate"),
        "predict": only_run_dir(root / "api", "_predict"),
        "val_images": val_dir,
        "val_labels": val_dir.parent.parent / "annotations" / "val",
    }


@pytest.fixture(scope="module")
def segmenter(trained: dict[str, Path]) -> Segmenter:
    return Segmenter.from_checkpoint(trained["ckpt"])


def test_segmenter_takes_the_checkpoints_protocol(segmenter: Segmenter) -> None:
    assert segmenter.protocol["window"] == "slide"
    assert segmenter.protocol["crop"] == [48, 48] and segmenter.protocol["stride"] == [32, 32]
    assert segmenter.data.test_scale == (80, 60)
    # vit_tiny_patch16_224 is an AugReg model: its weights expect 0.5/0.5.
    assert segmenter.data.mean == (0.5, 0.5, 0.5) and segmenter.data.std == (0.5, 0.5, 0.5)
    assert segmenter.class_names[0] == "background" and len(segmenter.palette) == segmenter.num_classes


def test_labels_equal_what_predict_and_validate_score(trained: dict[str, Path], segmenter: Segmenter) -> None:
    """API labels == ``vpnext predict``'s label PNGs, and their IoUs == ``vpnext validate``'s results."""
    iou = jaccard_index(segmenter.num_classes, 255)
    images = sorted(trained["val_images"].iterdir())
    assert len(images) == 4
    kinds = set()
    for path in images:
        labels = segmenter.predict(path)
        written = np.asarray(Image.open(trained["predict"] / "predictions" / f"{path.stem}.png"))
        np.testing.assert_array_equal(labels, written)
        kinds |= set(np.unique(labels).tolist())
        truth = np.asarray(Image.open(trained["val_labels"] / f"{path.stem}.png")).astype(np.int64)
        iou.update(torch.from_numpy(labels)[None], torch.from_numpy(truth)[None])
    assert len(kinds) > 1, "a model that predicts one class everywhere cannot tell protocols apart"
    results = json.loads((trained["validate"] / "results.json").read_text())
    validated = results["per_class_iou"]
    ours = iou.compute().tolist()
    for name, value in zip(segmenter.class_names, ours, strict=True):
        assert (validated[name] is None and np.isnan(value)) or validated[name] == pytest.approx(value, abs=0)


def test_any_image_kind_gives_a_map_at_its_size(segmenter: Segmenter, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    from_path = segmenter.predict(tmp_path / "odd.png")
    assert from_path.shape == (37, 53) and from_path.dtype == np.int64
    np.testing.assert_array_equal(segmenter.predict(rgb), from_path)
    np.testing.assert_array_equal(segmenter.predict(Image.fromarray(rgb)), from_path)
    # RGBA: the alpha channel is dropped, not blended.
    rgba = np.concatenate([rgb, rng.integers(0, 256, (37, 53, 1), dtype=np.uint8)], axis=2)
    np.testing.assert_array_equal(segmenter.predict(rgba), from_path)
    np.testing.assert_array_equal(segmenter.predict(Image.fromarray(rgba, "RGBA")), from_path)
    # Grayscale (array, PIL) and 16-bit (array, PIL, file) all become the same 8-bit gray RGB.
    gray16 = rng.integers(0, 65536, (21, 30), dtype=np.uint16)
    gray8 = np.clip(gray16 / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    Image.fromarray(gray16).save(tmp_path / "wide.png")
    expected = segmenter.predict(gray8)
    assert expected.shape == (21, 30)
    for image in (
        gray16,
        Image.fromarray(gray16),
        tmp_path / "wide.png",
        Image.fromarray(gray8),
        gray8[..., None],
    ):
        np.testing.assert_array_equal(segmenter.predict(image), expected)


def test_probabilities_sum_to_one_and_argmax_is_the_label_map(segmenter: Segmenter) -> None:
    image = np.random.default_rng(1).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    probs = segmenter.predict_proba(image)
    assert probs.shape == (segmenter.num_classes, 40, 70) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), segmenter.predict(image))


def test_evaluation_overrides(trained: dict[str, Path], segmenter: Segmenter) -> None:
    ms = Segmenter.from_checkpoint(trained["ckpt"], eval_mode="ms_flip", eval_scales=[0.75, 1.0])
    assert ms.protocol["mode"] == "ms_flip" and ms.protocol["flip"] and ms.protocol["scales"] == [0.75, 1.0]
    image = np.random.default_rng(2).integers(0, 256, (50, 50, 3), dtype=np.uint8)
    np.testing.assert_allclose(ms.predict_proba(image).sum(0), 1.0, atol=1e-5)
    whole = Segmenter.from_checkpoint(trained["ckpt"], eval_window="whole")
    assert whole.protocol["window"] == "whole"
    with pytest.raises(ValueError, match="eval_mod"):
        Segmenter.from_checkpoint(trained["ckpt"], eval_mod="ms_flip")


def test_class_names_and_palette_come_from_the_checkpoint(trained: dict[str, Path], tmp_path: Path) -> None:
    checkpoint = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    assert checkpoint["classes"] == {
        "names": list(SYNTHETIC_CLASSES),
        "palette": [list(rgb) for rgb in SYNTHETIC_PALETTE],
    }
    # A checkpoint keeps its own classes even when the dataset's spec says otherwise today.
    k = len(SYNTHETIC_CLASSES)
    checkpoint["classes"] = {
        "names": [f"c{i}" for i in range(k)],
        "palette": [[i, 2 * i, 3 * i] for i in range(k)],
    }
    torch.save(checkpoint, tmp_path / "renamed.ckpt")
    renamed = Segmenter.from_checkpoint(tmp_path / "renamed.ckpt")
    assert renamed.class_names == tuple(f"c{i}" for i in range(k))
    assert renamed.palette == tuple((i, 2 * i, 3 * i) for i in range(k))
    # Checkpoints written before the classes were saved fall back to the dataset spec.
    del checkpoint["classes"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    old = Segmenter.from_checkpoint(tmp_path / "old.ckpt")
    assert old.class_names == SYNTHETIC_CLASSES and old.palette == SYNTHETIC_PALETTE


def test_files_that_are_not_vpnext_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(CorruptCheckpointError, match="not a readable checkpoint"):
        Segmenter.from_checkpoint(tmp_path / "notes.ckpt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(CorruptCheckpointError, match="not a vpnext checkpoint"):
        Segmenter.from_checkpoint(tmp_path / "weights.pt")
    with pytest.raises(FileNotFoundError):
        Segmenter.from_checkpoint(tmp_path / "missing.ckpt")


def test_to_rgb_refuses_what_it_cannot_read() -> None:
    with pytest.raises(TypeError, match="float32"):
        to_rgb(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        to_rgb(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(TypeError, match="list"):
        to_rgb([[0, 1]])  # type: ignore[arg-type]


@pytest.mark.slow
def test_labelling_an_image_loads_no_lightning(trained: dict[str, Path], segmenter: Segmenter) -> None:
    image = next(trained["val_images"].iterdir())
    script = (
        "import sys, numpy as np\n"
        "from vpnext.inference import Segmenter\n"
        f"labels = Segmenter.from_checkpoint({str(trained['ckpt'])!r}).predict({str(image)!r})\n"
        f"np.save({str(trained['ckpt'].parent / 'labels.npy')!r}, labels)\n"
        "heavy = ('lightning', 'pytorch_lightning', 'torchmetrics')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    labels = np.load(trained["ckpt"].parent / "labels.npy")
    np.testing.assert_array_equal(labels, segmenter.predict(image))
