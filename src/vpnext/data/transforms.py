"""Training and evaluation pipelines (albumentations), following mmseg's semantic-seg recipe.

Training (DESIGN.md section 2), in mmseg's order: random keep-ratio rescale by 0.5-2.0 of a base
scale -> random crop re-drawn while one class covers more than ``cat_max_ratio`` of the valid
pixels -> horizontal flip -> photometric distortion -> normalise -> pad to the crop size (image
0 after normalisation, label 255).

Albumentations offers neither mmseg's "rescale relative to a base scale" nor the class-ratio
crop, so :class:`RandomResize` and :class:`CatMaxRatioCrop` are written here as ordinary
``DualTransform``s; everything else is albumentations' own.

Photometric distortion uses albumentations' ops with mmseg's ranges, each applied with p=0.5:
brightness +-32 (additive), contrast x[0.5, 1.5], saturation x[0.5, 1.5] (blend with gray, as
torchvision does, where mmseg scales HSV saturation) and hue +-18 (OpenCV units, i.e. +-36 deg).
mmseg's random choice of contrast before or after the HSV steps is not reproduced: contrast is
always applied first. ``photometric="strong"`` widens it for data whose scenes differ in lighting
(CamVid's videos run from dusk to bright day): brightness +-64, plus gamma x[0.6, 1.6] and a
per-channel colour shift of +-20 (white balance), see :func:`photometric_distortion`.
"""

from __future__ import annotations

from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


def keep_ratio_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """Output size of mmcv's keep-ratio rescale: fit inside ``scale`` as ``(long, short)`` bounds.

    Args:
        height: Input height.
        width: Input width.
        scale: ``(long, short)``: the long side may not exceed ``max(scale)`` nor the short side
            ``min(scale)``; the image is scaled (up or down) to touch one of the two bounds.

    Returns:
        ``(new_height, new_width)``, rounded to the nearest pixel.
    """
    long_bound, short_bound = max(scale), min(scale)
    factor = min(long_bound / max(height, width), short_bound / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class RandomResize(A.DualTransform):
    """mmseg's ``RandomResize(scale, ratio_range, keep_ratio=True)``.

    A ratio ``r ~ U(ratio_range)`` multiplies the base ``scale``, and the image is rescaled with
    :func:`keep_ratio_size` to fit ``(r * long, r * short)``. With ``scale=None`` the image is
    rescaled by ``r`` relative to its own size (for datasets without a protocol base scale).
    Image bilinear, label nearest.

    Args:
        scale: Base ``(long, short)`` scale, or ``None`` for "the image's own size".
        ratio_range: Range of the multiplier ``r``.
        p: Probability of applying the transform.
    """

    def __init__(
        self,
        scale: tuple[int, int] | None,
        ratio_range: tuple[float, float] = (0.5, 2.0),
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.scale = scale
        self.ratio_range = ratio_range

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        ratio = self.py_random.uniform(*self.ratio_range)
        if self.scale is None:
            size = (max(int(h * ratio + 0.5), 1), max(int(w * ratio + 0.5), 1))
        else:
            size = keep_ratio_size(h, w, (int(self.scale[0] * ratio), int(self.scale[1] * ratio)))
        return {"size": size}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


class KeepRatioResize(A.DualTransform):
    """Deterministic keep-ratio resize to a ``(long, short)`` scale (test-time resize).

    Args:
        scale: ``(long, short)`` bounds, see :func:`keep_ratio_size`.
        p: Probability of applying the transform.
    """

    def __init__(self, scale: tuple[int, int], p: float = 1.0) -> None:
        super().__init__(p=p)
        self.scale = scale

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        return {"size": keep_ratio_size(h, w, self.scale)}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def class_ratio_ok(label: np.ndarray, cat_max_ratio: float, ignore_index: int = IGNORE_INDEX) -> bool:
    """mmseg's acceptance test of a crop: at least two classes and none above ``cat_max_ratio``.

    Args:
        label: Label crop.
        cat_max_ratio: Largest allowed share of one class among the valid (non-ignore) pixels.
        ignore_index: Label value that is not counted.

    Returns:
        Whether the crop is accepted.
    """
    counts = np.bincount(label.ravel(), minlength=256)
    counts[ignore_index] = 0
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


class CatMaxRatioCrop(A.DualTransform):
    """Random crop re-drawn (up to ``max_tries`` times) while one class dominates it.

    Mirrors mmseg's ``RandomCrop(cat_max_ratio=...)``: draw a crop; while fewer than two classes
    are present or one class covers at least ``cat_max_ratio`` of the crop's non-ignore pixels,
    draw again, at most ``max_tries`` more times, then keep the last draw. A side shorter than
    the crop is taken whole (padding follows later). ``cat_max_ratio >= 1`` disables the check.

    Args:
        height: Crop height.
        width: Crop width.
        cat_max_ratio: Largest allowed share of one class.
        ignore_index: Label value not counted in the share.
        max_tries: Number of re-draws.
        p: Probability of applying the transform.
    """

    def __init__(
        self,
        height: int,
        width: int,
        cat_max_ratio: float = 0.75,
        ignore_index: int = IGNORE_INDEX,
        max_tries: int = 10,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.height = height
        self.width = width
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.max_tries = max_tries

    def _draw(self, h: int, w: int) -> tuple[int, int, int, int]:
        ch, cw = min(self.height, h), min(self.width, w)
        y0 = self.py_random.randint(0, h - ch)
        x0 = self.py_random.randint(0, w - cw)
        return y0, x0, y0 + ch, x0 + cw

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        box = self._draw(h, w)
        mask = data.get("mask")
        # When the crop spans the whole image there is only one box: re-drawing cannot help.
        single_box = self.height >= h and self.width >= w
        if mask is not None and self.cat_max_ratio < 1.0 and not single_box:
            for _ in range(self.max_tries):
                y0, x0, y1, x1 = box
                if class_ratio_ok(mask[y0:y1, x0:x1], self.cat_max_ratio, self.ignore_index):
                    break
                box = self._draw(h, w)
        return {"box": box}

    def apply(self, img: np.ndarray, box: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        y0, x0, y1, x1 = box
        return img[y0:y1, x0:x1]

    def apply_to_mask(self, mask: np.ndarray, box: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        y0, x0, y1, x1 = box
        return mask[y0:y1, x0:x1]


def photometric_distortion(p: float = 0.5, strength: Literal["mmseg", "strong"] = "mmseg") -> A.Compose:
    """mmseg's ``PhotoMetricDistortion`` ranges with albumentations ops (see module docstring).

    Args:
        p: Probability of each step.
        strength: ``mmseg`` (its four steps and ranges) or ``strong``: brightness +-64 instead of
            +-32, then also a gamma curve x[0.6, 1.6] and a per-channel shift of +-20 (p each).

    Returns:
        An image-only sub-pipeline.
    """
    brightness = (32 if strength == "mmseg" else 64) / 255
    steps = [
        A.RandomBrightnessContrast(brightness_limit=(-brightness, brightness), contrast_limit=0, p=p),
        A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=(-0.5, 0.5), p=p),
    ]
    if strength == "strong":
        steps += [
            A.RandomGamma(gamma_limit=(60, 160), p=p),
            A.RGBShift(r_shift_limit=20, g_shift_limit=20, b_shift_limit=20, p=p),
        ]
    steps += [
        A.ColorJitter(brightness=0, contrast=0, saturation=(0.5, 1.5), hue=0, p=p),
        A.HueSaturationValue(hue_shift_limit=(-18, 18), sat_shift_limit=0, val_shift_limit=0, p=p),
    ]
    return A.Compose(steps)


def build_train_transform(
    crop_size: tuple[int, int],
    scale: tuple[int, int] | None,
    *,
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool | Literal["strong"] = True,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    seed: int | None = None,
) -> A.Compose:
    """The training pipeline; call it as ``t(image=uint8 HxWx3, mask=uint8 HxW)``.

    Args:
        crop_size: ``(height, width)`` of the output.
        scale: Base ``(long, short)`` scale of :class:`RandomResize` (``None``: image's own size).
        ratio_range: Rescale range.
        cat_max_ratio: See :class:`CatMaxRatioCrop` (1.0 disables).
        flip_prob: Horizontal flip probability.
        photometric: Whether to apply :func:`photometric_distortion` (``True``: mmseg's ranges;
            ``"strong"``: the wider ones).
        mean: Normalisation mean (fractions of 255).
        std: Normalisation std (fractions of 255).
        seed: Seed of the pipeline's random state (``None``: from the OS).

    Returns:
        float32 normalised image and uint8 label, both exactly ``crop_size``.
    """
    steps: list[Any] = [
        RandomResize(scale, ratio_range),
        CatMaxRatioCrop(crop_size[0], crop_size[1], cat_max_ratio=cat_max_ratio),
        A.HorizontalFlip(p=flip_prob),
    ]
    if photometric:
        steps.append(photometric_distortion(strength="strong" if photometric == "strong" else "mmseg"))
    steps += [
        A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
        # mmseg pads bottom/right after normalising, so padded image pixels are 0 = the mean.
        A.PadIfNeeded(
            min_height=crop_size[0],
            min_width=crop_size[1],
            position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=IGNORE_INDEX,
        ),
    ]
    return A.Compose(steps, seed=seed)


def build_eval_transform(
    scale: tuple[int, int] | None,
    *,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> A.Compose:
    """The val/test/predict pipeline: optional keep-ratio resize, then normalisation.

    Args:
        scale: ``(long, short)`` test scale of :class:`KeepRatioResize`; ``None`` keeps the size.
        mean: Normalisation mean (fractions of 255).
        std: Normalisation std (fractions of 255).

    Returns:
        A pipeline callable as ``t(image=...)`` or ``t(image=..., mask=...)``.
    """
    steps: list[Any] = [] if scale is None else [KeepRatioResize(scale)]
    steps.append(A.Normalize(mean=mean, std=std, max_pixel_value=255.0))
    return A.Compose(steps)
