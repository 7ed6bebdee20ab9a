"""The typed structure :meth:`vpnext.models.VPNeXt.forward_train` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class VPNeXtOutput:
    """Everything the losses need from one training forward pass.

    Attributes:
        logits: Main per-class logits (B, K, H, W) at the input resolution.
        aux_logits: One (B, K, H, W) logit map per auxiliary layer for ``aux='deep_supervision'``
            and ``aux='vcr'`` (in ``aux_layers`` order); empty otherwise.
        align_pairs: For ``aux='naive_align'``: one ``(x_i, target)`` pair per auxiliary layer,
            both (B, C, h, w) backbone features, ``target`` being the detached final feature
            ``x_z`` (paper Eq. 1); empty otherwise.
        set_predictions: For ``head='mask2former'``: one :class:`SetPrediction` per decoder layer
            (the query-only prediction first, the final layer's last), which Mask2Former's set
            criterion trains; empty otherwise.
        padded_size: (H, W) of the input after the model padded it to whole tokens; the mask
            logits of ``set_predictions`` cover exactly this area.
    """

    logits: Tensor
    aux_logits: list[Tensor] = field(default_factory=list)
    align_pairs: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    set_predictions: list[SetPrediction] = field(default_factory=list)
    padded_size: tuple[int, int] | None = None


@dataclass
class SetPrediction:
    """One decoder layer's set prediction of the Mask2Former-style head (``head='mask2former'``).

    Attributes:
        class_logits: (B, Q, K + 1) per query; the last class is "no object".
        mask_logits: (B, Q, H/4, W/4) per query, on the 1/4 grid of the padded input.
    """

    class_logits: Tensor
    mask_logits: Tensor
