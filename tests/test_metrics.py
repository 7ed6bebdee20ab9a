"""Confusion-matrix mIoU against hand-computed values and against torchmetrics."""

from __future__ import annotations

import math

import pytest
import torch

from vpnext.evaluation.metrics import (
    confusion_matrix,
    iou_from_confusion,
    jaccard_index,
    miou_from_torchmetrics,
)

# 4 classes; class 3 appears neither in the labels nor in the predictions. Two ignored pixels carry
# predictions (3 and 0) that must not be counted.
PRED = torch.tensor([[0, 0, 1, 1], [1, 2, 2, 3], [0, 2, 1, 0]])
TARGET = torch.tensor([[0, 1, 1, 1], [2, 2, 2, 255], [0, 0, 1, 255]])


def test_confusion_matrix_and_iou_by_hand() -> None:
    # Counted (label, pred): (0,0) (1,0) (1,1) (1,1) (2,1) (2,2) (2,2) (0,0) (0,2) (1,1).
    expected_cm = torch.tensor([[2, 0, 1, 0], [1, 3, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]])
    cm = confusion_matrix(PRED, TARGET, num_classes=4)
    assert torch.equal(cm, expected_cm)

    per_class, miou = iou_from_confusion(cm)
    # IoU = tp / (label count + pred count - tp).
    iou = [2 / (3 + 3 - 2), 3 / (4 + 4 - 3), 2 / (3 + 3 - 2)]
    assert per_class[:3].tolist() == pytest.approx(iou)
    assert math.isnan(per_class[3].item())
    assert miou.item() == pytest.approx(sum(iou) / 3)


def test_torchmetrics_convention_matches_on_absent_class() -> None:
    metric = jaccard_index(num_classes=4)
    metric.update(PRED[:2], TARGET[:2])  # streaming over two "batches"
    metric.update(PRED[2:], TARGET[2:])
    per_class = metric.compute()
    ours, miou = iou_from_confusion(confusion_matrix(PRED, TARGET, 4))
    assert torch.allclose(per_class.double(), ours, equal_nan=True)
    assert miou_from_torchmetrics(per_class).item() == pytest.approx(miou.item())


def test_equals_torchmetrics_on_random_data() -> None:
    from torchmetrics.classification import MulticlassJaccardIndex

    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 6, (4, 32, 32), generator=generator)
    target = torch.randint(0, 6, (4, 32, 32), generator=generator)
    target[:, :3] = 255
    metric = MulticlassJaccardIndex(num_classes=6, average=None, ignore_index=255)
    per_class_tm = metric(pred, target)
    per_class, miou = iou_from_confusion(confusion_matrix(pred, target, 6))
    assert not per_class.isnan().any()
    assert torch.allclose(per_class_tm.double(), per_class, atol=1e-6)
    assert miou.item() == pytest.approx(per_class_tm.mean().item(), abs=1e-6)


def test_out_of_range_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="class ids"):
        confusion_matrix(torch.tensor([0, 4]), torch.tensor([0, 1]), num_classes=4)
    with pytest.raises(ValueError, match="class ids"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), num_classes=4)
