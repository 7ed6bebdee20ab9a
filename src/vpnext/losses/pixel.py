"""Segmentation losses: mask loss (focal + dice), cross-entropy, naive-align MSE (DESIGN.md, Sec. 1.7).

All per-pixel losses take logits (B, K, H, W) at label resolution and integer labels (B, H, W) in
which ``ignore_index`` (255) marks pixels that contribute nothing: neither to the value nor to the
normalisation, and a batch where every pixel is ignored yields an exact, differentiable zero.

Three per-pixel losses, by name (``SegmentationLoss(loss=...)``):

* ``mask`` — the paper's "mask loss that combines focal and dice losses, similar to existing works
  that use ViT mask decoders" (Sec. V), in those works' form (MaskFormer, SegViT): the binary mask
  of every class *present* in an image gets a sigmoid focal loss (mean over the image's valid
  pixels) and a dice loss; both are summed over the present masks of the batch and divided by
  their number. Absent classes get no dice (it would dominate: most of the K masks of an image are
  empty) but a class-presence term, the counterpart of the cited works' class CE: a binary
  cross-entropy on each class's image-level score, its largest logit over the image, against
  "is this class in the image". So predicting an absent class anywhere is punished.
* ``mask_all`` — focal + dice over all K class masks of every image (our earlier form, kept for
  comparison): dice is averaged over K, so the empty masks of absent classes weigh most.
* ``ce`` — cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

__all__ = ["ce_loss", "mask_all_loss", "mask_loss", "naive_align_loss"]

#: Mask-loss weights of MaskFormer (Cheng et al., 2021), the mask-decoder recipe that pairs sigmoid
#: focal with dice, as the paper does (Sec. V). The focal term is a mean over K·N pixel-class terms
#: that are mostly easy negatives down-weighted by (1 - p_t)^2 and alpha, so it is ~20x smaller than
#: dice; the weights bring both to a similar scale.
FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0
#: Weight of the class-presence term of ``mask``: MaskFormer's classification weight (1).
PRESENCE_WEIGHT = 1.0
#: Added to numerator and denominator of dice: keeps it defined (= 0) for an image where a class
#: is absent and predicted absent, and softens the gradient for classes with a handful of pixels.
DICE_SMOOTH = 1.0


def _check_shapes(logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"expected logits (B, K, H, W) and target (B, H, W) of the same size, got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}; resize logits to the label resolution first"
        )


def _zero(logits: Tensor) -> Tensor:
    """A zero that stays in the graph, so ``backward()`` works on an all-ignored batch."""
    return logits.sum() * 0.0


def _class_masks(target: Tensor, valid: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(weight, masks)``: valid pixels (B, 1, H, W) and one binary mask per class (B, K, H, W),
    zero on ignored pixels."""
    weight = valid.unsqueeze(1).float()
    masks = F.one_hot(target.masked_fill(~valid, 0).long(), num_classes).permute(0, 3, 1, 2) * weight
    return weight, masks


def _dice(probs: Tensor, masks: Tensor) -> Tensor:
    """Per image and class (B, K): ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)`` over the pixels."""
    inter = (probs * masks).sum(dim=(2, 3))
    return 1.0 - (2.0 * inter + DICE_SMOOTH) / (probs.sum(dim=(2, 3)) + masks.sum(dim=(2, 3)) + DICE_SMOOTH)


def mask_all_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = 255,
    focal_weight: float = FOCAL_WEIGHT,
    dice_weight: float = DICE_WEIGHT,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """Focal + dice over all K class masks of every image (``loss='mask_all'``).

    Unlike :func:`mask_loss`, absent classes count in dice like present ones, so for K much larger
    than the classes an image holds the dice term is mostly "predict these empty masks empty".

    Each class k defines a binary mask ``t_k = (target == k)`` predicted by ``p_k = sigmoid(logits_k)``.

    - focal: torchvision's ``sigmoid_focal_loss`` (alpha, gamma) over every (valid pixel, class)
      pair, **averaged over valid pixels and classes** (sum / (N_valid * K)), i.e. MaskFormer's
      per-mask pixel mean averaged over masks.
    - dice: per image and class, ``1 - (2 * sum(p * t) + s) / (sum(p) + sum(t) + s)`` with sums over
      that image's valid pixels and ``s = DICE_SMOOTH = 1``; **averaged over classes, then over the
      images that have at least one valid pixel**. Per image (not pooled over the batch) as in
      MaskFormer, so an image's loss does not depend on what else is in the batch.

    Args:
        logits: (B, K, H, W) per-class logits.
        target: (B, H, W) integer labels in ``0..K-1`` or ``ignore_index``.
        ignore_index: Label of pixels to leave out.
        focal_weight: Weight of the focal term (default 20, MaskFormer).
        dice_weight: Weight of the dice term (default 1, MaskFormer).
        alpha: Focal weight of positives (negatives get ``1 - alpha``).
        gamma: Focal exponent.

    Returns:
        Scalar loss; exactly 0 if every pixel is ignored.
    """
    _check_shapes(logits, target)
    valid = target != ignore_index
    if not bool(valid.any()):
        return _zero(logits)
    num_classes = logits.shape[1]
    # fp32 whatever the autocast dtype: log-sigmoid and large sums are fragile in half precision.
    logits32 = logits.float()

    pixel_logits = logits32.permute(0, 2, 3, 1)[valid]  # (N_valid, K)
    pixel_masks = F.one_hot(target[valid].long(), num_classes).float()
    focal = sigmoid_focal_loss(pixel_logits, pixel_masks, alpha=alpha, gamma=gamma, reduction="sum")
    focal = focal / pixel_logits.numel()

    weight, masks = _class_masks(target, valid, num_classes)
    dice = _dice(logits32.sigmoid() * weight, masks)
    has_valid = valid.flatten(1).any(dim=1)
    dice = dice.mean(dim=1)[has_valid].mean()

    return focal_weight * focal + dice_weight * dice


def mask_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = 255,
    focal_weight: float = FOCAL_WEIGHT,
    dice_weight: float = DICE_WEIGHT,
    presence_weight: float = PRESENCE_WEIGHT,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """The cited works' mask loss: focal + dice over present masks, plus a class-presence term.

    For image b with valid pixels V_b and present classes P_b (labels occurring in V_b), class k's
    mask ``t = (target == k)`` is predicted by ``p = sigmoid(logits_k)``:

    - ``focal_bk = mean over V_b of sigmoid_focal(logits_k, t)`` (torchvision, alpha, gamma);
    - ``dice_bk = 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)``, sums over V_b;
    - ``mask = sum over b, k in P_b of (focal_weight * focal_bk + dice_weight * dice_bk) / M``,
      M = sum_b |P_b| the number of present masks in the batch (MaskFormer's ``num_masks``);
    - ``presence = mean over b (with a valid pixel) and all k of BCE(max over V_b of logits_k,
      [k in P_b])``.

    Returns ``mask + presence_weight * presence``; exactly 0 if every pixel is ignored.

    Args:
        logits: (B, K, H, W) per-class logits.
        target: (B, H, W) integer labels in ``0..K-1`` or ``ignore_index``.
        ignore_index: Label of pixels to leave out.
        focal_weight: Weight of the focal term (default 20, MaskFormer).
        dice_weight: Weight of the dice term (default 1, MaskFormer).
        presence_weight: Weight of the class-presence term (default 1, MaskFormer's class weight).
        alpha: Focal weight of positives (negatives get ``1 - alpha``).
        gamma: Focal exponent.
    """
    _check_shapes(logits, target)
    valid = target != ignore_index
    if not bool(valid.any()):
        return _zero(logits)
    num_classes = logits.shape[1]
    logits32 = logits.float()
    weight, masks = _class_masks(target, valid, num_classes)
    present = masks.sum(dim=(2, 3)) > 0  # (B, K)
    has_valid = valid.flatten(1).any(1)  # (B,)
    num_valid = weight.flatten(1).sum(1).clamp(min=1)  # (B,)

    focal = sigmoid_focal_loss(logits32, masks, alpha=alpha, gamma=gamma, reduction="none")
    focal = (focal * weight).flatten(2).sum(2) / num_valid[:, None]  # (B, K) mean over valid pixels
    dice = _dice(logits32.sigmoid() * weight, masks)
    per_mask = focal_weight * focal + dice_weight * dice
    mask_term = per_mask[present].sum() / present.sum()

    # Image-level score of each class: its largest logit over the image's valid pixels.
    scores = logits32.masked_fill(~valid.unsqueeze(1), float("-inf")).flatten(2).amax(2)  # (B, K)
    presence = F.binary_cross_entropy_with_logits(
        scores[has_valid], present[has_valid].float(), reduction="mean"
    )
    return mask_term + presence_weight * presence


def ce_loss(
    logits: Tensor, target: Tensor, ignore_index: int = 255, class_weight: Tensor | None = None
) -> Tensor:
    """Pixel-wise cross-entropy averaged over valid pixels; exactly 0 if every pixel is ignored.

    (``F.cross_entropy`` alone returns NaN there: a mean over zero pixels.) With ``class_weight``
    (K,), pixel i counts ``class_weight[target_i]`` times and the mean is over the summed weights
    of the valid pixels (PyTorch's weighted mean), so the loss scale does not depend on the weights'
    overall scale.
    """
    _check_shapes(logits, target)
    if not bool((target != ignore_index).any()):
        return _zero(logits)
    return F.cross_entropy(logits.float(), target.long(), weight=class_weight, ignore_index=ignore_index)


def naive_align_loss(pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Paper Eq. (1): ``sum_i MSE(x_i, x_z)`` over the auxiliary layers.

    The target is detached here as well (the model already passes ``x_z.detach()``), so that the
    final layer is never pulled towards the intermediate ones even if a caller forgets.

    Args:
        pairs: ``(x_i, x_z)`` feature pairs of equal shape.
    """
    if not pairs:
        raise ValueError("naive_align_loss needs at least one (x_i, x_z) pair")
    return torch.stack([F.mse_loss(x.float(), z.detach().float()) for x, z in pairs]).sum()
