"""Pictures of evaluations: the logged image / ground truth / prediction grid and the confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from tests.helpers import SMALL_RUN_ARGS, one_hot_module, only_run_dir, sample_with_ids
from vpnext.cli import main
from vpnext.data import seg_collate
from vpnext.data.base import read_image
from vpnext.training.val_pictures import picture_grid, picture_indices, save_confusion_matrix


def test_confusion_matrix_counts_pixels_by_label_and_prediction(tmp_path: Path) -> None:
    import torch

    # The hand-counted split of test_training: A (4x4 image, 8x8 label, top half 0, bottom 1,
    # all predicted 0); B (6x6, label 1 with an ignored column, predicted 1 left, 0 right).
    label_a = torch.zeros(8, 8, dtype=torch.long)
    label_a[4:] = 1
    ids_b = torch.zeros(6, 6, dtype=torch.long)
    ids_b[:, :3] = 1
    label_b = torch.ones(6, 6, dtype=torch.long)
    label_b[:, 5] = 255
    samples = [sample_with_ids(torch.zeros(4, 4, dtype=torch.long), label_a), sample_with_ids(ids_b, label_b)]
    module = one_hot_module()
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.validate(
        module, dataloaders=DataLoader(samples, batch_size=2, collate_fn=seg_collate), verbose=False
    )
    # Rows: label 0 (32 px, all predicted 0), label 1 (32 + 12 predicted 0, 18 predicted 1), label 2.
    assert module.evaluation_results["val"]["confusion_matrix"] == [[32, 0, 0], [44, 18, 0], [0, 0, 0]]


def test_picture_grid_layout() -> None:
    a = np.zeros((5, 7, 3), dtype=np.uint8)
    b = np.full((3, 4, 3), 9, dtype=np.uint8)
    grid = picture_grid([[a, a, a], [b, b, b]], gap=2)
    assert grid.shape == (5 + 2 + 3, 3 * 7 + 2 * 2, 3)
    assert (grid[:5, 7:9] == 255).all() and (grid[7:, 4:6] == 255).all() and (grid[7:, 16:] == 255).all()
    np.testing.assert_array_equal(grid[7:, :4], b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    data = tmp_path_factory.mktemp("data")
    common = [
        *SMALL_RUN_ARGS,
        f"--data.root={data}",
        f"--run.root={root}",
        "--run.name=pic",
        "--run.pictures=2",
    ]
    assert main(["fit", *common]) == 0
    fit = only_run_dir(root / "pic", "_fit")
    ckpt = fit / "checkpoints" / "last.ckpt"
    assert main(["validate", "--config", str(fit / "config.yaml"), "--ckpt_path", str(ckpt)]) == 0
    return {"fit": fit, "validate": only_run_dir(root / "pic", "_validate"), "data": data}


def test_each_validation_writes_and_logs_the_picture_grid(runs: dict[str, Path]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # SMALL_RUN_ARGS: one epoch of 2 steps, validated at its end (no sanity check).
    grids = sorted((runs["fit"] / "pictures").glob("val_step*.png"))
    assert [g.name for g in grids] == ["val_step0000002.png"]
    grid = np.asarray(Image.open(grids[-1]))
    assert grid.shape == (2 * 64 + 2, 3 * 64 + 2 * 2, 3)  # 2 images x (image | truth | prediction)
    val_images = sorted(p for p in runs["data"].rglob("*.png") if p.parts[-3:-1] == ("images", "val"))
    np.testing.assert_array_equal(grid[:64, :64], read_image(val_images[0]))
    # The two pictures are the first and the last validation image (spread over the split).
    np.testing.assert_array_equal(grid[66:, :64], read_image(val_images[-1]))
    events = EventAccumulator(str(runs["fit"] / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "val/pictures" in events.Tags()["images"]
    assert [e.step for e in events.Images("val/pictures")] == [2]


def test_validate_records_the_confusion_matrix(runs: dict[str, Path]) -> None:
    results = json.loads((runs["validate"] / "results.json").read_text())
    matrix = np.asarray(results["confusion_matrix"])
    classes = len(results["per_class_iou"])
    assert matrix.shape == (classes, classes)
    # Every scored pixel once: 4 val images of 64x64, minus the ignored ones.
    labels = [p for p in runs["data"].rglob("*.png") if p.parts[-3:-1] == ("annotations", "val")]
    valid = sum(int((np.asarray(Image.open(p)) != 255).sum()) for p in labels)
    assert len(labels) == 4 and matrix.sum() == valid
    diagonal = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - diagonal
    for name, (inter, uni) in zip(results["per_class_iou"], zip(diagonal, union, strict=True), strict=True):
        iou = results["per_class_iou"][name]
        assert (iou is None and uni == 0) or iou == pytest.approx(inter / uni)
    picture = Image.open(runs["validate"] / "confusion_matrix.png")
    assert picture.size[0] >= 300 and (runs["validate"] / "pictures").is_dir()


def test_picture_indices_spread_over_the_split() -> None:
    assert picture_indices(4, 101) == [0, 33, 67, 100]
    assert picture_indices(3, 3) == [0, 1, 2] and picture_indices(5, 2) == [0, 1]
    assert picture_indices(1, 10) == [0] and picture_indices(0, 10) == [] and picture_indices(2, 0) == []
    for count, length in [(4, 5), (7, 8), (6, 1000)]:
        indices = picture_indices(count, length)
        assert len(set(indices)) == count and indices[0] == 0 and indices[-1] == length - 1


def test_confusion_matrix_of_many_classes_stays_a_readable_size(tmp_path: Path) -> None:
    """COCO-Stuff's 171 classes: the figure is capped at 2,000 px, not 0.35 inch per class."""
    names = [f"class{i}" for i in range(171)]
    matrix = np.eye(171, dtype=np.int64).tolist()
    picture = Image.open(save_confusion_matrix(matrix, names, tmp_path / "cm.png"))
    assert picture.size == (2000, 2000)
    few = Image.open(
        save_confusion_matrix(np.eye(11, dtype=np.int64).tolist(), names[:11], tmp_path / "few.png")
    )
    assert few.size == (585, 585)  # CamVid: (0.35 * 11 + 2) inches at 100 dpi
