"""Images in, RGB arrays out: the conversions the Python API accepts.

Files are decoded by :func:`vpnext.data.base.read_image`, the reader of every dataset, so a file
given to :class:`~vpnext.inference.Segmenter` becomes the same pixels as in evaluation. In-memory
images follow the same rules: grayscale is repeated to three channels, an alpha channel is
dropped, 16-bit images are scaled to 8 bits (not clipped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vpnext.data.base import read_image

__all__ = ["ImageInput", "to_rgb"]

#: What :func:`to_rgb` accepts: a file path, a PIL image or an (H, W), (H, W, 1|3|4) array.
ImageInput = str | Path | Image.Image | np.ndarray

_WIDE_PIL_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_rgb(image: ImageInput) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a path, a PIL image or an array.

    Args:
        image: A path (any format PIL reads); a PIL image (any mode); or a numpy array of shape
            (H, W) or (H, W, C) with C in 1, 3 (RGB), 4 (RGBA, alpha dropped), dtype uint8 or
            uint16 (scaled by 255/65535).

    Raises:
        vpnext.data.DatasetError: A file that is missing or cannot be decoded.
        TypeError: Another kind of object, or an array of another dtype.
        ValueError: An array of another shape.
    """
    if isinstance(image, (str, Path)):
        return read_image(Path(image))
    if isinstance(image, Image.Image):
        if image.mode in _WIDE_PIL_MODES:
            return _rgb_from_array(_scale_wide(np.asarray(image, dtype=np.float64), image.mode))
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint16:
            image = _scale_wide(image.astype(np.float64), "I;16")
        elif image.dtype != np.uint8:
            raise TypeError(f"image array of dtype {image.dtype}: expected uint8 or uint16")
        return _rgb_from_array(image)
    raise TypeError(f"image of type {type(image).__name__}: expected a path, a PIL image or a numpy array")


def _scale_wide(values: np.ndarray, mode: str) -> np.ndarray:
    top = 65535.0 if mode.startswith("I;16") else max(float(values.max()), 1.0)
    return np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _rgb_from_array(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return np.ascontiguousarray(np.repeat(array[..., None], 3, axis=2))
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[..., :3])
    raise ValueError(f"image array of shape {array.shape}: expected (H, W) or (H, W, 1|3|4)")
