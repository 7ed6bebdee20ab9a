"""The training loss of a VPNeXt forward pass: main, auxiliary and alignment terms (DESIGN.md 1.7)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpnext.losses.pixel import (
    DICE_WEIGHT,
    FOCAL_WEIGHT,
    PRESENCE_WEIGHT,
    ce_loss,
    mask_all_loss,
    mask_loss,
    naive_align_loss,
)
from vpnext.losses.set_criterion import SetCriterion
from vpnext.models.outputs import VPNeXtOutput

__all__ = ["AuxWeighting", "PixelLoss", "SegmentationLoss"]


PixelLoss = Literal["mask", "mask_all", "ce"]
AuxWeighting = Literal["total", "per_layer"]


class SegmentationLoss(nn.Module):
    """Total training loss of a VPNeXt forward pass (DESIGN.md, Secs. 1.4 and 1.7).

    ``loss = main + sum_i w_i * aux_i + align_weight * align``, where ``main`` and every ``aux_i``
    use the same per-pixel loss (``deep_supervision`` / ``vcr`` logits) and ``align`` is
    :func:`naive_align_loss` (``naive_align`` feature pairs). For ``head='mask2former'`` (the output
    carries set predictions) ``main`` is Mask2Former's set criterion over all decoder layers
    (:class:`~vpnext.losses.SetCriterion`) whatever ``loss`` says; ``loss`` and ``class_weight``
    then apply to the auxiliary logit maps only. The auxiliary weight ``w_i`` is
    ``aux_weight / n`` for each of the n auxiliary maps with ``aux_weighting='total'`` (the total
    auxiliary weight is the same whatever the number of layers: Table I's 1-, 2- and 3-layer rows
    then differ only in where the supervision goes) or ``aux_weight`` each with ``'per_layer'``
    (mmseg's convention for one auxiliary head; the total grows with the layer count).

    Args:
        loss: ``"mask"`` (focal + dice over present masks + class presence, the paper's),
            ``"mask_all"`` (focal + dice over all K masks) or ``"ce"`` (cross-entropy).
        aux_weight: Total (or per-layer) weight of the auxiliary logit maps' losses.
        aux_weighting: ``"total"`` or ``"per_layer"``, see above.
        align_weight: Weight of the naive-align MSE.
        focal_weight: Focal weight of the mask losses (ignored for ``"ce"``).
        dice_weight: Dice weight of the mask losses (ignored for ``"ce"``).
        presence_weight: Class-presence weight of ``"mask"``.
        ignore_index: Label of pixels to leave out.
        class_weight: Per-class weights of ``"ce"`` (K values, e.g. from
            ``scripts/class_weights.py``); ``None`` weighs every class 1. The mask losses balance
            classes by construction (each present mask counts once) and refuse it.
    """

    def __init__(
        self,
        loss: PixelLoss = "mask",
        aux_weight: float = 0.4,
        aux_weighting: AuxWeighting = "total",
        align_weight: float = 1.0,
        focal_weight: float = FOCAL_WEIGHT,
        dice_weight: float = DICE_WEIGHT,
        presence_weight: float = PRESENCE_WEIGHT,
        ignore_index: int = 255,
        class_weight: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if class_weight is not None and loss != "ce":
            raise ValueError(
                f"class_weight is a weighting of loss='ce'; loss={loss!r} balances classes itself"
            )
        # A buffer follows the module's device; not persistent, so checkpoints keep no copy of an
        # hparam they already hold.
        weight = None if class_weight is None else torch.tensor([float(w) for w in class_weight])
        self.register_buffer("class_weight", weight, persistent=False)
        if loss == "mask":
            self.pixel_loss = partial(
                mask_loss,
                ignore_index=ignore_index,
                focal_weight=focal_weight,
                dice_weight=dice_weight,
                presence_weight=presence_weight,
            )
        elif loss == "mask_all":
            self.pixel_loss = partial(
                mask_all_loss, ignore_index=ignore_index, focal_weight=focal_weight, dice_weight=dice_weight
            )
        elif loss == "ce":
            self.pixel_loss = self._ce
        else:
            raise ValueError(f"loss must be 'mask', 'mask_all' or 'ce', got {loss!r}")
        if aux_weighting not in ("total", "per_layer"):
            raise ValueError(f"aux_weighting must be 'total' or 'per_layer', got {aux_weighting!r}")
        self.loss = loss
        self.aux_weight = aux_weight
        self.aux_weighting = aux_weighting
        self.align_weight = align_weight
        self.ignore_index = ignore_index
        #: Built on the first set prediction (it needs the number of classes).
        self.set_criterion: SetCriterion | None = None

    def _ce(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.class_weight is not None and self.class_weight.numel() != logits.shape[1]:
            given, classes = self.class_weight.numel(), logits.shape[1]
            raise ValueError(f"class_weight has {given} values for {classes} classes")
        return ce_loss(logits, target, self.ignore_index, self.class_weight)

    def aux_layer_weight(self, num_aux: int) -> float:
        """The weight of each of ``num_aux`` auxiliary logit maps."""
        return self.aux_weight / num_aux if self.aux_weighting == "total" else self.aux_weight

    def forward(self, output: VPNeXtOutput | Tensor, target: Tensor) -> dict[str, Tensor]:
        """Compute every term.

        Args:
            output: The model's training output, or bare main logits (B, K, H, W).
            target: (B, H, W) labels.

        Returns:
            ``"loss"`` (weighted total, to backpropagate), ``"main"``, one unweighted ``"aux_<i>"``
            per auxiliary logit map and ``"align"`` (unweighted) if there are align pairs; with set
            predictions also the final decoder layer's unweighted ``"set_class"``, ``"set_mask"``
            and ``"set_dice"``.
        """
        if isinstance(output, Tensor):
            output = VPNeXtOutput(logits=output)
        if output.set_predictions:
            terms = self._set_terms(output, target)
        else:
            terms = {"main": self.pixel_loss(output.logits, target)}
        total = terms["main"]
        if output.aux_logits:
            weight = self.aux_layer_weight(len(output.aux_logits))
            for i, aux in enumerate(output.aux_logits):
                terms[f"aux_{i}"] = self.pixel_loss(aux, target)
                total = total + weight * terms[f"aux_{i}"]
        if output.align_pairs:
            terms["align"] = naive_align_loss(output.align_pairs)
            total = total + self.align_weight * terms["align"]
        return {"loss": total, **terms}

    def _set_terms(self, output: VPNeXtOutput, target: Tensor) -> dict[str, Tensor]:
        if self.set_criterion is None:
            self.set_criterion = SetCriterion(output.logits.shape[1], self.ignore_index).to(target.device)
        height, width = output.padded_size or target.shape[-2:]
        # The model padded its input right/bottom; padding is in no mask (ignored like any label 255).
        padded = F.pad(
            target, (0, width - target.shape[-1], 0, height - target.shape[-2]), value=self.ignore_index
        )
        terms = self.set_criterion(output.set_predictions, padded)
        return {"main": terms["total"], **{f"set_{k}": terms[k] for k in ("class", "mask", "dice")}}
