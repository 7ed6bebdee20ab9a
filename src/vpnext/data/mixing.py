"""Mixing two training crops: ClassMix and CutMix.

A from-scratch ViT trained on a few videos learns which surfaces go with which street: on a video
it has not seen, pavement, fences and trees collapse (docs/results/camvid.md). Mixing two crops
puts the pixels of one scene into another, so a label can no longer be read from the scene around
it. Both operations copy image pixels and their labels together, so every pixel keeps its own
label:

* **ClassMix** (Olsson et al., WACV 2021, as used for supervised and semi-supervised
  segmentation): half of the classes present in the partner crop (rounded up), chosen at random;
  their pixels replace those of the crop.
* **CutMix** (Yun et al., ICCV 2019, for segmentation as in French et al., BMVC 2020): a box whose
  area is a uniform share of the crop, at a uniform position, is taken from the partner.

The partner and every random choice are drawn from the sample's own seed (epoch and index), not
from a global generator, so the stream stays a pure function of (seed, epoch, position) and a
resumed run continues it exactly (:mod:`vpnext.data.resume`).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from vpnext.data.catalog import IGNORE_INDEX

__all__ = ["MIX_MODES", "MixMode", "class_mix", "cut_mix", "mix_pair"]

MixMode = Literal["none", "classmix", "cutmix"]
MIX_MODES: tuple[str, ...] = get_args(MixMode)


def class_mix(
    image: Tensor, label: Tensor, partner_image: Tensor, partner_label: Tensor, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """Paste the pixels of half of the partner's classes (rounded up) onto the crop.

    Args:
        image: ``(3, H, W)`` crop.
        label: ``(H, W)`` its labels.
        partner_image: ``(3, H, W)`` the crop whose classes are pasted.
        partner_label: ``(H, W)`` its labels; ignored pixels are never pasted.
        rng: Source of the class choice.

    Returns:
        The mixed image and label (new tensors; the inputs are not changed).
    """
    present = torch.unique(partner_label)
    present = present[present != IGNORE_INDEX]
    if present.numel() == 0:
        return image.clone(), label.clone()
    count = (present.numel() + 1) // 2
    chosen = present[torch.from_numpy(rng.permutation(present.numel())[:count])]
    mask = torch.isin(partner_label, chosen)
    return torch.where(mask, partner_image, image), torch.where(mask, partner_label, label)


def cut_mix(
    image: Tensor, label: Tensor, partner_image: Tensor, partner_label: Tensor, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """Paste a box of the partner crop: area a uniform share of the crop, aspect the crop's.

    Args:
        image, label, partner_image, partner_label, rng: As in :func:`class_mix`.

    Returns:
        The mixed image and label (new tensors).
    """
    height, width = label.shape
    side = float(np.sqrt(rng.uniform(0.0, 1.0)))
    box_h, box_w = int(round(height * side)), int(round(width * side))
    top = int(rng.integers(0, height - box_h + 1))
    left = int(rng.integers(0, width - box_w + 1))
    box = (slice(top, top + box_h), slice(left, left + box_w))
    image, label = image.clone(), label.clone()
    image[(slice(None), *box)] = partner_image[(slice(None), *box)]
    label[box] = partner_label[box]
    return image, label


_MIXERS = {"classmix": class_mix, "cutmix": cut_mix}


def mix_pair(
    mode: MixMode,
    image: Tensor,
    label: Tensor,
    partner_image: Tensor,
    partner_label: Tensor,
    rng: np.random.Generator,
) -> tuple[Tensor, Tensor]:
    """Mix two crops of one size with ``mode`` (``"none"`` returns the crop unchanged)."""
    if mode == "none":
        return image, label
    if image.shape != partner_image.shape or label.shape != partner_label.shape:
        raise ValueError(
            f"cannot mix crops of different sizes: {tuple(image.shape)} and {tuple(partner_image.shape)}"
        )
    return _MIXERS[mode](image, label, partner_image, partner_label, rng)
