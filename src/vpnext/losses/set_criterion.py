"""Mask2Former's set criterion: Hungarian matching, then class and point-sampled mask losses.

Trains ``head='mask2former'`` (:mod:`vpnext.models.mask2former`) as Mask2Former (Cheng et al.,
CVPR 2022) does for semantic segmentation:

* **Targets.** Each class present in an image is one target: its label and its binary mask. Ignored
  pixels (and the model's padding) belong to no mask, so they are negatives of every mask, as in
  Mask2Former's semantic dataset mapper.
* **Matching** (no gradient), per image and decoder layer, by ``scipy.optimize.linear_sum_assignment``
  on ``5 * BCE + 2 * (-p_class) + 5 * dice`` between every query and every target, the mask terms
  on 12,544 points drawn uniformly (the same points for predictions and targets; fewer for masks
  under 128 x 128, see :class:`SetCriterion`).
* **Losses** of the matched pairs: cross-entropy over K + 1 classes for *every* query (unmatched
  ones to "no object", weighted 0.1), and sigmoid BCE + dice on 12,544 points per matched mask
  chosen by uncertainty (3x oversampling, 75 % of the points where ``|logit|`` is smallest, the
  rest uniform); both mask terms are summed over masks and divided by the number of target masks
  in the batch (averaged over DDP ranks, at least 1).
* **Deep supervision**: the same loss for the prediction of every decoder layer, summed.

The weights (class 2, mask 5, dice 5, no-object 0.1) and the point counts are Mask2Former's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from vpnext.models.outputs import SetPrediction

__all__ = [
    "SetCriterion",
    "hungarian_match",
    "matching_cost",
    "pairwise_mask_costs",
    "point_sample",
    "semantic_targets",
]

CLASS_WEIGHT = 2.0
MASK_WEIGHT = 5.0
DICE_WEIGHT = 5.0
NO_OBJECT_WEIGHT = 0.1
NUM_POINTS = 112 * 112
#: Mask2Former's points per mask as a fraction of its masks' pixels (12,544 of 128 x 128 at 1/4 of
#: its 512 crops): smaller masks get this fraction of their pixels, larger ones NUM_POINTS.
POINT_FRACTION = NUM_POINTS / (128 * 128)
OVERSAMPLE_RATIO = 3.0
IMPORTANCE_RATIO = 0.75


def point_sample(maps: Tensor, points: Tensor) -> Tensor:
    """Bilinear values of ``maps`` (N, H, W) at ``points`` (N, P, 2), ``(x, y)`` in [0, 1]: (N, P).

    ``0`` and ``1`` are the outer edges of the first and last pixel (``align_corners=False``). Points
    in the outer half pixel read the edge value: Mask2Former's ``point_sample`` reads zero beyond
    the edge there, so that an all-one target mask is ~0.5 at its border and a map at 1/4
    resolution blends with logit 0 over two input pixels.
    """
    grid = 2.0 * points.unsqueeze(2) - 1.0  # (N, P, 1, 2)
    maps = maps.unsqueeze(1)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0, :, 0]


def semantic_targets(labels: Tensor, ignore_index: int = 255) -> list[tuple[Tensor, Tensor]]:
    """Per image of ``labels`` (B, H, W): the present classes (n,) and their masks (n, H, W), float."""
    targets = []
    for label in labels:
        classes = label.unique()
        classes = classes[classes != ignore_index]
        targets.append((classes.long(), (label[None] == classes[:, None, None]).float()))
    return targets


def pairwise_mask_costs(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Mean sigmoid BCE and dice (with +1 smoothing) of every prediction against every target.

    Args:
        logits: (Q, P) mask logits at P points.
        targets: (n, P) target masks at the same points.

    Returns:
        ``(bce, dice)``, each (Q, n).
    """
    points = logits.shape[1]
    # BCE against 0 is softplus(x), against 1 softplus(-x) = softplus(x) - x, so
    # sum_p [t softplus(-x) + (1 - t) softplus(x)] = sum_p softplus(x) - x . t (one softplus).
    negative = F.softplus(logits)
    bce = (negative.sum(-1, keepdim=True) - logits @ targets.T) / points
    probs = logits.sigmoid()
    dice = 1.0 - (2.0 * probs @ targets.T + 1.0) / (probs.sum(-1)[:, None] + targets.sum(-1)[None, :] + 1.0)
    return bce, dice


@torch.no_grad()
def matching_cost(
    class_logits: Tensor, mask_logits: Tensor, classes: Tensor, masks: Tensor, num_points: int = NUM_POINTS
) -> Tensor:
    """Mask2Former's matching cost (Q, n) of every query against every target of one image:
    ``5 * BCE + 2 * (-p_class) + 5 * dice``, the mask terms on ``num_points`` uniform points.

    Args:
        class_logits: (Q, K + 1).
        mask_logits: (Q, h, w).
        classes: (n,) target classes.
        masks: (n, H, W) target masks.
        num_points: Points drawn uniformly (the same for predictions and targets).
    """
    cost_class = -class_logits.float().softmax(-1)[:, classes]
    points = torch.rand(1, num_points, 2, device=mask_logits.device)
    pred = point_sample(mask_logits.float(), points.expand(mask_logits.shape[0], -1, -1))
    target = point_sample(masks.float(), points.expand(masks.shape[0], -1, -1))
    bce, dice = pairwise_mask_costs(pred, target)
    return MASK_WEIGHT * bce + CLASS_WEIGHT * cost_class + DICE_WEIGHT * dice


@torch.no_grad()
def hungarian_match(
    class_logits: Tensor, mask_logits: Tensor, classes: Tensor, masks: Tensor, num_points: int = NUM_POINTS
) -> tuple[Tensor, Tensor]:
    """Queries and targets of one image matched at the least total :func:`matching_cost`
    (``scipy.optimize.linear_sum_assignment``).

    Returns:
        ``(query_index, target_index)``, each (min(Q, n),), sorted by query.
    """
    device = class_logits.device
    if classes.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty
    cost = matching_cost(class_logits, mask_logits, classes, masks, num_points)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.long, device=device), torch.as_tensor(
        cols, dtype=torch.long, device=device
    )


def _uncertain_points(logits: Tensor, num_points: int) -> Tensor:
    """Mask2Former's importance sampling: (M, num_points, 2) points for the masks ``logits`` (M, h, w)."""
    count = logits.shape[0]
    candidates = torch.rand(count, int(num_points * OVERSAMPLE_RATIO), 2, device=logits.device)
    uncertainty = -point_sample(logits, candidates).abs()
    important = int(IMPORTANCE_RATIO * num_points)
    top = uncertainty.topk(important, dim=1).indices
    chosen = candidates.gather(1, top.unsqueeze(-1).expand(-1, -1, 2))
    uniform = torch.rand(count, num_points - important, 2, device=logits.device)
    return torch.cat([chosen, uniform], dim=1)


def _num_masks(targets: list[tuple[Tensor, Tensor]], device: torch.device) -> float:
    """Target masks in the batch, averaged over DDP ranks, at least 1 (Mask2Former's ``num_masks``)."""
    count = torch.tensor(float(sum(len(classes) for classes, _ in targets)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return max(float(count), 1.0)


class SetCriterion(nn.Module):
    """Mask2Former's loss over every decoder layer's set prediction (see the module docstring).

    Args:
        num_classes: Classes K (the predictions have K + 1 with "no object").
        ignore_index: Label of pixels that belong to no target mask.
        num_points: Points per mask for the losses and for matching; ``None``: Mask2Former's 12,544,
            or :data:`POINT_FRACTION` of the mask logits' pixels if that is fewer (masks under
            128 x 128, i.e. crops under 512 x 512: 2,022 points for CamVid's 176 x 240 crops), so
            that small masks are not sampled several times per pixel.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, num_points: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.num_points = num_points
        weight = torch.ones(num_classes + 1)
        weight[-1] = NO_OBJECT_WEIGHT
        self.register_buffer("class_weight", weight, persistent=False)

    def points_for(self, mask_logits: Tensor) -> int:
        """Points per mask for masks of the size of ``mask_logits`` (..., h, w)."""
        if self.num_points is not None:
            return self.num_points
        pixels = mask_logits.shape[-2] * mask_logits.shape[-1]
        return min(NUM_POINTS, max(1, round(POINT_FRACTION * pixels)))

    def layer_terms(
        self, prediction: SetPrediction, targets: list[tuple[Tensor, Tensor]], num_masks: float
    ) -> dict[str, Tensor]:
        """Unweighted ``class``, ``mask`` (BCE) and ``dice`` terms of one decoder layer."""
        class_logits = prediction.class_logits.float()
        mask_logits = prediction.mask_logits.float()
        num_points = self.points_for(mask_logits)
        target_classes = torch.full(
            class_logits.shape[:2], self.num_classes, dtype=torch.long, device=class_logits.device
        )
        matched_logits, matched_masks = [], []
        for b, (classes, masks) in enumerate(targets):
            rows, cols = hungarian_match(class_logits[b], mask_logits[b], classes, masks, num_points)
            target_classes[b, rows] = classes[cols]
            matched_logits.append(mask_logits[b, rows])
            matched_masks.append(masks[cols])
        terms = {"class": F.cross_entropy(class_logits.transpose(1, 2), target_classes, self.class_weight)}
        logits = torch.cat(matched_logits)
        if logits.shape[0] == 0:
            zero = mask_logits.sum() * 0.0
            return {**terms, "mask": zero, "dice": zero}
        with torch.no_grad():
            points = _uncertain_points(logits, num_points)
            labels = point_sample(torch.cat(matched_masks), points)
        point_logits = point_sample(logits, points)
        terms["mask"] = (
            F.binary_cross_entropy_with_logits(point_logits, labels, reduction="none").mean(1).sum()
            / num_masks
        )
        probs = point_logits.sigmoid()
        dice = 1.0 - (2.0 * (probs * labels).sum(-1) + 1.0) / (probs.sum(-1) + labels.sum(-1) + 1.0)
        terms["dice"] = dice.sum() / num_masks
        return terms

    def forward(self, predictions: list[SetPrediction], labels: Tensor) -> dict[str, Tensor]:
        """The total over all layers and the final layer's unweighted terms.

        Args:
            predictions: One set prediction per decoder layer, the final one last.
            labels: (B, H, W) labels covering the area of the mask logits (the padded input).

        Returns:
            ``"total"``: ``sum over layers of 2 class + 5 mask + 5 dice``; ``"class"``, ``"mask"``,
            ``"dice"``: the final layer's terms.
        """
        targets = semantic_targets(labels, self.ignore_index)
        num_masks = _num_masks(targets, labels.device)
        total = labels.new_zeros((), dtype=torch.float32)
        for prediction in predictions:
            terms = self.layer_terms(prediction, targets, num_masks)
            total = (
                total
                + CLASS_WEIGHT * terms["class"]
                + MASK_WEIGHT * terms["mask"]
                + DICE_WEIGHT * terms["dice"]
            )
        return {"total": total, **terms}
