"""Label maps as pictures: palette PNGs whose values are the train ids, and colour overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["colorize", "overlay", "palette_png", "save_palette_png"]


def _palette_array(palette: Sequence[Sequence[int]]) -> np.ndarray:
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return table


def palette_png(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A mode-P image whose pixel values are ``labels`` (train ids < 256) and colours ``palette``.

    Reading it back with ``np.asarray(Image.open(path))`` gives ``labels`` unchanged.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("a palette PNG holds label values 0-255 only")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(_palette_array(palette).reshape(-1).tolist())
    return image


def save_palette_png(labels: np.ndarray, palette: Sequence[Sequence[int]], path: str | Path) -> None:
    """Write :func:`palette_png` to ``path``."""
    palette_png(labels, palette).save(path)


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """RGB uint8 (H, W, 3): each pixel the palette colour of its label (ids past the palette black)."""
    return _palette_array(palette)[np.clip(labels, 0, 255).astype(np.intp)]


def overlay(
    image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> np.ndarray:
    """The image with the label colours blended over it: ``(1 - alpha) * image + alpha * colour``."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(labels, palette).astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)
