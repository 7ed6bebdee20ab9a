"""Training losses: per-pixel (mask, cross-entropy), naive-align, Mask2Former's set criterion."""

from vpnext.losses.pixel import (
    DICE_WEIGHT,
    FOCAL_WEIGHT,
    PRESENCE_WEIGHT,
    ce_loss,
    mask_all_loss,
    mask_loss,
    naive_align_loss,
)
from vpnext.losses.segmentation import AuxWeighting, PixelLoss, SegmentationLoss
from vpnext.losses.set_criterion import SetCriterion, hungarian_match

__all__ = [
    "DICE_WEIGHT",
    "FOCAL_WEIGHT",
    "PRESENCE_WEIGHT",
    "AuxWeighting",
    "PixelLoss",
    "SegmentationLoss",
    "SetCriterion",
    "ce_loss",
    "hungarian_match",
    "mask_all_loss",
    "mask_loss",
    "naive_align_loss",
]
