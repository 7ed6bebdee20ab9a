"""Auxiliary supervision of intermediate ViT layers (paper Sec. III, IV-A; DESIGN.md 1.4).

Training-only: :class:`~vpnext.models.VPNeXt` calls these modules only in ``train()`` mode, so
their inference cost is zero whatever variant is chosen (Table III's first claim).

Variants:
    * :class:`DeepSupervision` — each ``x_i`` gets an independent copy of the context head with
      its own offsets and affinity (the paper's baseline).
    * :class:`NaiveAlign` — Eq. (1), ``sum_i MSE(x_i, x_z)`` with ``x_z`` detached.
    * :class:`VisualContextReplay` — Eqs. (2)–(3): each ``x_i`` is aggregated with the *final*
      layer's offsets ``sigma_z`` (local context replay) and affinity ``Lambda_z`` (global context
      replay), then classified and supervised with the main loss.

Choices where the paper is silent:
    * Naive-align compares ``x_i`` after the backbone's final norm with ``x_z`` (also after it),
      so both live in the same normalised space; the target is detached (it is the teacher).
    * By default VCR replays the context as a fixed prior (stop-gradient into ``sigma_z`` and
      ``Lambda_z``); ``replay_stop_grad=False`` lets the auxiliary loss shape them too.
    * Auxiliary logits are upsampled bilinearly from 1/16, independent of the main upsampler.
"""

from __future__ import annotations

from torch import Tensor, nn

from vpnext.models.context_head import ContextAggregation, ContextHead, SpatialContext
from vpnext.models.layers import upsample_to

AuxOutputs = tuple[list[Tensor], list[tuple[Tensor, Tensor]]]


def _classifier(dim: int, num_classes: int, dropout: float = 0.1) -> nn.Sequential:
    return nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(dim, num_classes, 1))


class DeepSupervision(nn.Module):
    """Plain deep supervision: an independent context head + classifier per auxiliary layer.

    Args:
        in_dim: ViT width C.
        dim: Decoder width D.
        num_classes: Number of classes K.
        num_layers: Number of supervised intermediate layers.
        num_heads: Attention heads of each branch's affinity.
        deform_impl: Deformable-conv implementation.
        num_convs: 3x3 convs after each branch's context (the main head's count).
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_classes: int,
        num_layers: int,
        num_heads: int = 8,
        deform_impl: str = "auto",
        num_convs: int = 0,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            ContextHead(
                in_dim, dim, num_classes, num_heads=num_heads, deform_impl=deform_impl, num_convs=num_convs
            )
            for _ in range(num_layers)
        )

    def forward(
        self, features: list[Tensor], final: Tensor, context: SpatialContext | None, size: tuple[int, int]
    ) -> AuxOutputs:
        logits = []
        for x_i, branch in zip(features, self.branches, strict=True):
            y_i, own_context = branch(x_i)
            logits.append(upsample_to(branch.classify(y_i, own_context), size))
        return logits, []


class NaiveAlign(nn.Module):
    """Paper Eq. (1): feature pairs ``(x_i, x_z.detach())`` for an MSE alignment loss."""

    def forward(
        self, features: list[Tensor], final: Tensor, context: SpatialContext | None, size: tuple[int, int]
    ) -> AuxOutputs:
        target = final.detach()
        return [], [(x_i, target) for x_i in features]


class VisualContextReplay(nn.Module):
    """Visual Context Replay (paper Eqs. 2–3).

    Each auxiliary layer owns a :class:`ContextAggregation` (its projection, deformable-conv
    weights ``varrho_i`` and value/output projections ``phi_i``) and a classifier; the offsets and
    the affinity come from the main context head.

    Args:
        in_dim: ViT width C.
        dim: Decoder width D.
        num_classes: Number of classes K.
        num_layers: Number of replayed intermediate layers.
        num_heads: Must equal the main head's, since its affinity is replayed per head.
        deform_impl: Deformable-conv implementation.
        replay_stop_grad: Cut the auxiliary loss's gradient into the replayed ``sigma_z``/``Lambda_z``.
        num_convs: 3x3 convs after each branch's context (the main head's count).
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_classes: int,
        num_layers: int,
        num_heads: int = 8,
        deform_impl: str = "auto",
        replay_stop_grad: bool = True,
        num_convs: int = 0,
    ) -> None:
        super().__init__()
        self.replay_stop_grad = replay_stop_grad
        self.branches = nn.ModuleList(
            ContextAggregation(in_dim, dim, num_heads, deform_impl, num_convs) for _ in range(num_layers)
        )
        self.classifiers = nn.ModuleList(_classifier(dim, num_classes) for _ in range(num_layers))

    def forward(
        self, features: list[Tensor], final: Tensor, context: SpatialContext | None, size: tuple[int, int]
    ) -> AuxOutputs:
        if context is None:
            raise RuntimeError("VisualContextReplay needs the context head's SpatialContext")
        replayed = context.detach() if self.replay_stop_grad else context
        logits = []
        for x_i, branch, classifier in zip(features, self.branches, self.classifiers, strict=True):
            gamma_i = branch.local_context(branch.proj(x_i), replayed.offsets)
            y_i = branch.global_context(gamma_i, replayed.query, replayed.key)
            logits.append(upsample_to(classifier(y_i), size))
        return logits, []
