"""Pictures of an evaluation: image / ground truth / prediction grids and the confusion matrix.

:class:`ValidationPictures` segments the same ``num_images`` validation images (the first of the
split) at the end of every validation, with the run's test-time protocol, and shows them as rows
of image | ground truth | prediction: written to ``<run dir>/pictures/val_step<step>.png`` and
logged to TensorBoard (``add_image``) and W&B (``log_image``) under ``val/pictures``.
:func:`save_confusion_matrix` draws the confusion matrix ``vpnext validate``/``test`` record in
``results.json`` (rows: ground truth, columns: prediction, normalised per row).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

from vpnext.data.base import read_image
from vpnext.evaluation import resize_to
from vpnext.inference.pictures import colorize

__all__ = ["ValidationPictures", "picture_grid", "save_confusion_matrix"]

#: Colour of ignored pixels (label 255) in the ground-truth column.
IGNORE_COLOUR = (255, 255, 255)


def picture_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 2) -> np.ndarray:
    """RGB uint8 grid of equally sized (H, W, 3) pictures, ``gap`` white pixels between them.

    Each row's pictures share one size; rows may differ (they are padded to the widest, white).
    """
    lines = []
    for pictures in rows:
        height = pictures[0].shape[0]
        spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
        parts = [part for picture in pictures for part in (picture, spacer)][:-1]
        lines.append(np.concatenate(parts, axis=1))
    width = max(line.shape[1] for line in lines)
    padded = [
        np.pad(line, ((0, gap), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines
    ]
    return np.concatenate(padded, axis=0)[:-gap]


def picture_indices(count: int, length: int) -> list[int]:
    """``count`` distinct indices spread evenly over ``range(length)``, first and last included."""
    if count <= 0 or length <= 0:
        return []
    if count >= length:
        return list(range(length))
    if count == 1:
        return [0]
    return [round(i * (length - 1) / (count - 1)) for i in range(count)]


class ValidationPictures(Callback):
    """Image / ground truth / prediction for fixed validation images, every validation.

    Args:
        num_images: How many images, spread evenly over the validation split (its first and last
            included: consecutive frames of a video data set such as CamVid would look alike);
            0 turns it off.
        dirpath: Folder of the PNG grids; ``None`` uses ``<trainer.default_root_dir>/pictures``.
    """

    def __init__(self, num_images: int = 4, dirpath: str | None = None) -> None:
        self.num_images = num_images
        self.dirpath = dirpath
        #: Path of the last grid written (rank 0).
        self.last_path: Path | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.num_images <= 0:
            return
        dataset = getattr(getattr(trainer, "datamodule", None), "val_set", None)
        palette = getattr(trainer.datamodule, "palette", None) if dataset is not None else None
        if dataset is None or not palette:
            return
        rows = []
        was_training = pl_module.training
        pl_module.eval()
        with torch.inference_mode():
            for index in picture_indices(self.num_images, len(dataset)):
                sample = dataset[index]
                image = sample["image"][None].to(pl_module.device)
                label = sample["label"].numpy()
                scores = resize_to(pl_module(image), label.shape)
                prediction = scores.argmax(1)[0].cpu().numpy()
                truth = colorize(label, palette)
                truth[label == 255] = IGNORE_COLOUR
                rgb = read_image(Path(sample["meta"]["image_path"]))
                rows.append([rgb, truth, colorize(prediction, palette)])
        pl_module.train(was_training)
        grid = picture_grid(rows)
        folder = Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "pictures"
        folder.mkdir(parents=True, exist_ok=True)
        step = int(trainer.global_step)
        self.last_path = folder / f"val_step{step:07d}.png"
        Image.fromarray(grid).save(self.last_path)
        _log_image(trainer, "val/pictures", grid, step)


def _log_image(trainer: L.Trainer, key: str, grid: np.ndarray, step: int) -> None:
    for logger in trainer.loggers:
        kind = type(logger).__name__
        if kind == "TensorBoardLogger":
            logger.experiment.add_image(key, grid, step, dataformats="HWC")
        elif kind == "WandbLogger":
            logger.log_image(key=key, images=[grid], step=step, caption=["image | ground truth | prediction"])


#: The largest confusion-matrix figure, in inches (at 100 dpi).
MAX_CONFUSION_INCHES = 20.0


def save_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> Path:
    """Draw a confusion matrix (rows: ground truth, columns: prediction) normalised per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    # 0.35 inch per class up to MAX_CONFUSION_INCHES (2,000 px at 100 dpi); past it (ADE20K's 150,
    # COCO-Stuff's 171 classes) the labels shrink instead: an uncapped 171-class figure is 6,200 px
    # square and takes seconds to draw at every evaluation.
    n = len(class_names)
    size = min(MAX_CONFUSION_INCHES, max(4.0, 0.35 * n + 2.0))
    fontsize = min(8.0, 0.8 * 72 * (size - 2.0) / n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ticks = range(n)
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, class_names, fontsize=fontsize)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion matrix (share of each ground-truth class)")
    if len(class_names) <= 20:
        for (row, col), share in np.ndenumerate(shares):
            colour = "white" if share > 0.5 else "black"
            ax.text(col, row, f"{share:.2f}", ha="center", va="center", fontsize=7, color=colour)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
