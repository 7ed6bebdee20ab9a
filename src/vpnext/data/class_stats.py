"""Per-class pixel statistics of a data set's labels and the loss weights derived from them.

``scripts/class_weights.py`` prints them for ``--model.class_weight``; see its docstring for the
two schemes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vpnext.data.base import read_label
from vpnext.data.catalog import IGNORE_INDEX, get_dataset_spec
from vpnext.data.datasets import DATASET_CLASSES
from vpnext.data.errors import DatasetError
from vpnext.data.groups import GroupRule

__all__ = ["ENET_C", "class_pixel_counts", "class_weights"]

ENET_C = 1.02


def class_pixel_counts(
    dataset: str,
    root: str,
    split: str,
    exclude_groups: Sequence[str] = (),
    group_pattern: str | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(pixels, image_pixels, names)``: per class, its pixel count and the valid-pixel count of
    the images it occurs in.

    Args:
        exclude_groups: Groups (videos, cities) left out, as ``data.val_groups`` leaves them out
            of training (:mod:`vpnext.data.groups`).
        group_pattern: The group rule; ``None`` uses the dataset's.
    """
    spec = get_dataset_spec(dataset, root if dataset == "folder" else None)
    data = DATASET_CLASSES[dataset](root, split, spec=spec, check_files="none")
    samples = data.samples
    if exclude_groups:
        pattern = group_pattern or spec.group_pattern
        if pattern is None:
            raise DatasetError(f"dataset {dataset!r} declares no group rule: give group_pattern")
        rule, root_path = GroupRule(pattern), Path(root)
        samples = [
            s
            for s, g in zip(samples, rule.groups_of(root_path, samples), strict=True)
            if g not in exclude_groups
        ]
    lut, k = spec.label_lut(), spec.num_classes
    pixels = np.zeros(k, dtype=np.int64)
    image_pixels = np.zeros(k, dtype=np.int64)
    for sample in samples:
        label = read_label(sample.label_path, lut, k)
        counts = np.bincount(label[label != IGNORE_INDEX].ravel(), minlength=k)[:k]
        pixels += counts
        image_pixels[counts > 0] += counts.sum()
    return pixels, image_pixels, list(spec.class_names)


def class_weights(pixels: np.ndarray, image_pixels: np.ndarray, scheme: str = "enet") -> np.ndarray:
    """Weights per class (0 for a class with no pixels), pixel-weighted mean 1."""
    present = pixels > 0
    weights = np.zeros(len(pixels), dtype=np.float64)
    if scheme == "enet":
        share = pixels / pixels.sum()
        weights[present] = 1.0 / np.log(ENET_C + share[present])
    elif scheme == "median":
        freq = pixels[present] / image_pixels[present]
        weights[present] = np.median(freq) / freq
    else:
        raise ValueError(f"unknown scheme {scheme!r}: 'enet' or 'median'")
    return weights / (weights * pixels).sum() * pixels.sum()
