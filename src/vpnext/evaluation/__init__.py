"""Test-time inference (whole, sliding window, multi-scale + flip, the resolved protocol), mIoU and
image coverage."""

from vpnext.evaluation.coverage import ImageTally, coverage_flags
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
from vpnext.evaluation.protocol import apply_protocol, resolve_eval_protocol

__all__ = [
    "ImageTally",
    "apply_protocol",
    "confusion_matrix",
    "coverage_flags",
    "inference",
    "iou_from_confusion",
    "jaccard_index",
    "miou_from_torchmetrics",
    "ms_flip_inference",
    "resize_to",
    "resolve_eval_protocol",
    "slide_inference",
    "whole_inference",
    "window_starts",
]
