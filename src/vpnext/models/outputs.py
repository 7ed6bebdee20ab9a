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
    """

    logits: Tensor
    aux_logits: list[Tensor] = field(default_factory=list)
    align_pairs: list[tuple[Tensor, Tensor]] = field(default_factory=list)
