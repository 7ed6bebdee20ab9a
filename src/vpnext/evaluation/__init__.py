"""Test-time inference (whole, sliding window, multi-scale + flip) and mIoU."""

from vpnext.evaluation.inference import (
    inference,
    ms_flip_inference,
    resize_to,
    slide_inference,
    whole_inference,
    window_starts,
)
from vpnext.evaluation.metrics import (
    confusion_matrix,
    iou_from_confusion,
    jaccard_index,
    miou_from_torchmetrics,
)

__all__ = [
    "confusion_matrix",
    "inference",
    "iou_from_confusion",
    "jaccard_index",
    "miou_from_torchmetrics",
    "ms_flip_inference",
    "resize_to",
    "slide_inference",
    "whole_inference",
    "window_starts",
]
