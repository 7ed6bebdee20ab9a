"""Confusion-matrix mIoU and the project's convention for classes absent from a split.

mIoU (DESIGN.md, Sec. 2): intersections and unions are summed over the whole split, IoU is taken
per class, and the mean runs over classes. A class that appears neither in the labels nor in the
predictions has union 0 and no defined IoU; **the project reports it as NaN and leaves it out of the
mean** (mmsegmentation's convention). This matters on small splits (the synthetic val set, a
debugging subset) where a rare class may be missing.

torchmetrics' ``MulticlassJaccardIndex(average=None)`` returns ``zero_division`` (default 0) for
such a class, which would silently pull the mean down; ``average="macro"`` does drop it, but then
the per-class values are lost. Training therefore builds the metric with :func:`jaccard_index`
(``zero_division=nan``) and reduces with :func:`miou_from_torchmetrics`, which agrees with
:func:`iou_from_confusion` class by class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # torchmetrics takes ~2 s to import: only the training loop needs it
    from torchmetrics.classification import MulticlassJaccardIndex

__all__ = ["confusion_matrix", "iou_from_confusion", "jaccard_index", "miou_from_torchmetrics"]


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Count (label, prediction) pairs over the pixels whose label is not ``ignore_index``.

    Args:
        pred: Predicted class ids, any shape, integer.
        target: Label ids, same shape as ``pred``.
        num_classes: Number of classes K.
        ignore_index: Label value excluded from counting (whatever is predicted there).

    Returns:
        (K, K) int64 matrix, ``cm[label, prediction]`` (rows = labels, as in torchmetrics).

    Raises:
        ValueError: On a shape mismatch or a counted id outside ``0..K-1`` (it would otherwise land
            in another class's cell).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    valid = target != ignore_index
    t = target[valid].long()
    p = pred[valid].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"class ids must lie in 0..{num_classes - 1} (or be {ignore_index} in target)")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(cm: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class IoU and mIoU from a (K, K) confusion matrix (or torchmetrics' ``confmat`` state).

    Args:
        cm: Counts with rows = labels, columns = predictions.

    Returns:
        ``(per_class_iou, miou)``: float64 (K,) with NaN for classes absent from both labels and
        predictions, and the NaN-ignoring mean (NaN if no class is present at all).
    """
    cm = cm.double()
    inter = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - inter
    per_class = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))
    return per_class, per_class.nanmean()


def jaccard_index(num_classes: int, ignore_index: int = 255) -> MulticlassJaccardIndex:
    """The project's streaming IoU metric: per class, NaN for classes absent from labels and preds.

    It accumulates the same confusion matrix as :func:`confusion_matrix` (and syncs it across DDP
    ranks); reduce its ``compute()`` with :func:`miou_from_torchmetrics`.
    """
    from torchmetrics.classification import MulticlassJaccardIndex

    return MulticlassJaccardIndex(
        num_classes=num_classes, average=None, ignore_index=ignore_index, zero_division=float("nan")
    )


def miou_from_torchmetrics(per_class: Tensor) -> Tensor:
    """mIoU over the classes present in the split, from :func:`jaccard_index`'s per-class output.

    Args:
        per_class: (K,) IoUs with NaN for absent classes. A metric built with the default
            ``zero_division=0`` reports absent classes as 0, which this cannot tell from a present
            class that was never predicted correctly: build the metric with :func:`jaccard_index`.
    """
    return per_class.double().nanmean()
