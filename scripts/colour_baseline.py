"""How far per-pixel colour alone gets on the synthetic data set.

By design (docs/synthetic.md) colour finds the background and the textures, not the wires and not
the window/sign pair.

Fits the Bayes classifier of a pixel's class given its own colour: a joint RGB histogram per class
(``--bins`` levels per channel, Laplace smoothing) on the train split, combined with a class prior,
and scores it on the val split with the project's mIoU. Two priors are reported:

- ``empirical``: the train-split class frequencies; this maximises per-pixel accuracy among
  colour-only classifiers (up to the quantisation).
- ``uniform``: every class equally likely, which gives rare classes their best chance.

Usage::

    python scripts/colour_baseline.py [--num-train 400 --num-val 100 --image-size 128 --seed 0]
        [--root CACHE_DIR] [--bins 32] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vpnext.data.synthetic import ensure_synthetic
from vpnext.evaluation.metrics import confusion_matrix, iou_from_confusion

IGNORE_INDEX = 255


def colour_index(image: np.ndarray, bins: int) -> np.ndarray:
    """Joint RGB bin of every pixel of a uint8 (H, W, 3) image, in ``0..bins**3 - 1``."""
    q = image.astype(np.int64) * bins // 256
    return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]


def fit_colour_classifier(
    samples: Iterator[tuple[np.ndarray, np.ndarray]], num_classes: int, bins: int, prior: str
) -> np.ndarray:
    """Fit the per-pixel colour classifier.

    Args:
        samples: ``(image uint8 (H, W, 3), label uint8 (H, W))`` pairs; label 255 is skipped.
        num_classes: K.
        bins: Quantisation levels per channel.
        prior: ``"empirical"`` (class frequencies) or ``"uniform"``.

    Returns:
        (bins**3,) lookup table: the predicted class of every colour bin.
    """
    cells = bins**3
    counts = np.zeros(num_classes * cells, dtype=np.int64)
    for image, label in samples:
        valid = label != IGNORE_INDEX
        keys = label[valid].astype(np.int64) * cells + colour_index(image, bins)[valid]
        counts += np.bincount(keys, minlength=num_classes * cells)
    counts = counts.reshape(num_classes, cells)
    totals = counts.sum(axis=1, keepdims=True)
    # Laplace smoothing: a colour never seen with a class keeps a small, not zero, likelihood.
    log_likelihood = np.log(counts + 1.0) - np.log(totals + cells)
    if prior == "empirical":
        log_prior = np.log(np.maximum(totals[:, 0], 1) / totals.sum())
    elif prior == "uniform":
        log_prior = np.zeros(num_classes)
    else:
        raise ValueError(f"prior must be 'empirical' or 'uniform', got {prior!r}")
    return np.argmax(log_prior[:, None] + log_likelihood, axis=0)


def load_split(root: Path, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(image, label)`` arrays of one split of a folder data set in the synthetic layout."""
    for sample_id in (root / f"{split}.txt").read_text().split():
        image = np.asarray(Image.open(root / "images" / split / f"{sample_id}.png").convert("RGB"))
        label = np.asarray(Image.open(root / "annotations" / split / f"{sample_id}.png"))
        yield image, label


def evaluate(
    table: np.ndarray, samples: Iterator[tuple[np.ndarray, np.ndarray]], num_classes: int, bins: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class IoU and mIoU of the lookup-table classifier over ``samples``."""
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for image, label in samples:
        pred = table[colour_index(image, bins)]
        cm += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(label.astype(np.int64)), num_classes)
    return iou_from_confusion(cm)


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _fmt(value: float) -> str:
    return "  n/a" if math.isnan(value) else f"{100 * value:5.1f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="cache folder (default: $VPNEXT_CACHE)")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bins", type=int, default=32, help="quantisation levels per RGB channel")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    root = ensure_synthetic(
        args.root, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size, seed=args.seed
    )
    classes = json.loads((root / "meta.json").read_text())["classes"]
    num_classes = len(classes)
    results: dict = {
        "dataset": {k: getattr(args, k) for k in ("num_train", "num_val", "image_size", "seed")},
        "bins": args.bins,
        "classes": classes,
    }
    for prior in ("empirical", "uniform"):
        table = fit_colour_classifier(load_split(root, "train"), num_classes, args.bins, prior)
        per_class, miou = evaluate(table, load_split(root, "val"), num_classes, args.bins)
        ious = dict(zip(classes, per_class.tolist(), strict=True))
        # JSON has no NaN: a class absent from val is written as null.
        results[prior] = {"miou": miou.item(), "per_class_iou": {c: _or_none(v) for c, v in ious.items()}}
        print(f"colour-only classifier, {prior} prior: mIoU {_fmt(miou.item())}")
        for name, iou in ious.items():
            print(f"  {name:<12} IoU {_fmt(iou)}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
