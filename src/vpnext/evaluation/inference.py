"""Test-time inference: whole image, sliding window, multi-scale + flip (DESIGN.md, Sec. 2).

``model_fn`` is any callable mapping an image batch (B, 3, h, w) to logits (B, K, h, w) at the same
resolution, e.g. a model in eval mode; it must accept sizes that are not multiples of the patch size
(our models pad internally), because border windows and rescaled images are passed as they are.

Single-scale functions return logits; :func:`ms_flip_inference` returns averaged softmax
probabilities. The argmax of both is the prediction, so metrics treat them alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "inference",
    "ms_flip_inference",
    "resize_to",
    "slide_inference",
    "whole_inference",
    "window_starts",
]

ModelFn = Callable[[Tensor], Tensor]
InferenceMode = Literal["whole", "slide"]


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the sliding windows along one axis (mmsegmentation's grid).

    ``max(length - crop + stride - 1, 0) // stride + 1`` windows at ``i * stride``, the last one
    clamped so that it ends at the edge; a length shorter than the crop gives one window at 0.

    Args:
        length: Image size along the axis.
        crop: Window size.
        stride: Step between windows; must not exceed ``crop`` or pixels would be skipped.
    """
    if not 0 < stride <= crop:
        raise ValueError(f"need 0 < stride <= crop, got stride={stride}, crop={crop}")
    count = max(length - crop + stride - 1, 0) // stride + 1
    return [min(i * stride, max(length - crop, 0)) for i in range(count)]


def _check_logits(logits: Tensor, image: Tensor, num_classes: int | None = None) -> None:
    expected_k = logits.shape[1] if num_classes is None else num_classes
    expected = (image.shape[0], expected_k, *image.shape[-2:])
    if tuple(logits.shape) != expected:
        raise ValueError(
            f"model_fn returned {tuple(logits.shape)} for an input of {tuple(image.shape)}, "
            f"expected {expected}"
        )


def whole_inference(model_fn: ModelFn, image: Tensor) -> Tensor:
    """Run ``model_fn`` on the full image; returns logits (B, K, H, W)."""
    logits = model_fn(image)
    _check_logits(logits, image)
    return logits


def slide_inference(
    model_fn: ModelFn,
    image: Tensor,
    num_classes: int,
    crop: tuple[int, int],
    stride: tuple[int, int],
) -> Tensor:
    """Sliding-window logits averaged over overlapping windows.

    Args:
        model_fn: Maps (B, 3, h, w) to (B, K, h, w) logits.
        image: (B, 3, H, W) input.
        num_classes: K.
        crop: Window (height, width). Windows are cut from the image only; when the image is smaller
            than the window, the smaller crop is passed as is.
        stride: Step (height, width) between windows.

    Returns:
        (B, K, H, W) logits: the sum over windows divided by the per-pixel window count.
    """
    batch, _, height, width = image.shape
    tops = window_starts(height, crop[0], stride[0])
    lefts = window_starts(width, crop[1], stride[1])
    summed = image.new_zeros((batch, num_classes, height, width))
    count = image.new_zeros((1, 1, height, width))
    for top in tops:
        for left in lefts:
            window = image[..., top : top + crop[0], left : left + crop[1]]
            logits = model_fn(window)
            _check_logits(logits, window, num_classes)
            summed[..., top : top + crop[0], left : left + crop[1]] += logits
            count[..., top : top + crop[0], left : left + crop[1]] += 1
    return summed / count


def inference(
    model_fn: ModelFn,
    image: Tensor,
    num_classes: int,
    mode: InferenceMode = "whole",
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
) -> Tensor:
    """Single-scale logits (B, K, H, W) by ``mode``: ``"whole"`` or ``"slide"`` (needs crop, stride)."""
    if mode == "whole":
        logits = whole_inference(model_fn, image)
        _check_logits(logits, image, num_classes)
        return logits
    if mode == "slide":
        if crop is None or stride is None:
            raise ValueError("mode='slide' needs crop and stride")
        return slide_inference(model_fn, image, num_classes, crop, stride)
    raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")


def resize_to(logits: Tensor, size: tuple[int, int] | Sequence[int]) -> Tensor:
    """Bilinearly resize (B, K, h, w) maps to ``size`` (e.g. the original label's (H, W)).

    ``align_corners=False``, the convention of the resize that produced the test image. Returns the
    input unchanged when it already has that size.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def ms_flip_inference(
    model_fn: ModelFn,
    image: Tensor,
    num_classes: int,
    scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
    flip: bool = True,
    mode: InferenceMode = "whole",
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
) -> Tensor:
    """Multi-scale (+ horizontal flip) test-time augmentation.

    For each scale the image is resized to ``round(H * s) x round(W * s)`` (bilinear,
    ``align_corners=False``; no rounding to a multiple of the patch size, the model pads), run with
    :func:`inference`, the logits are resized back to (H, W) and turned into softmax probabilities.
    With ``flip`` the horizontally flipped image is run as well and its output flipped back. The
    probabilities are averaged over all ``len(scales) * (1 + flip)`` passes.

    Returns:
        (B, K, H, W) averaged probabilities (not logits; the argmax is what gets scored).
    """
    if not scales:
        raise ValueError("scales must not be empty")
    height, width = image.shape[-2:]
    probs = image.new_zeros((image.shape[0], num_classes, height, width))
    passes = 0
    for scale in scales:
        size = (max(round(height * scale), 1), max(round(width * scale), 1))
        scaled = resize_to(image, size)
        views = [False, True] if flip else [False]
        for flipped in views:
            view = scaled.flip(-1) if flipped else scaled
            logits = inference(model_fn, view, num_classes, mode, crop, stride)
            if flipped:
                logits = logits.flip(-1)
            probs += torch.softmax(resize_to(logits, (height, width)), dim=1)
            passes += 1
    return probs / passes
