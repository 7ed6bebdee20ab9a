"""Segmenter-style mask transformer head: the "mask decoder w/o pyramid" baseline (Table I).

Follows Strudel et al., *Segmenter* (ICCV 2021), mask-transformer decoder (DESIGN.md 1.5):
patch tokens are projected to width D, K learnable class embeddings are appended, the joint
sequence goes through ``depth`` (2) transformer blocks and a LayerNorm, then patch and class
tokens are projected, L2-normalised, and the masks are their scalar products, normalised by a
LayerNorm over the class axis.

To share the upsamplers with the context head, the head returns the normed patch map as its
"features" and the normalised class embeddings as its "context"; :meth:`classify` takes the
scalar product at whatever resolution the upsampler produced (1/16 for bilinear, i.e. exactly
Segmenter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn


class MaskTransformerHead(nn.Module):
    """Segmenter mask transformer.

    Args:
        in_dim: ViT width C.
        dim: Decoder width D.
        num_classes: Number of classes K (one learnable class embedding each).
        classifier_dim: Channels of the map :meth:`classify` receives (the upsampler's output).
        depth: Transformer blocks over [patches; classes] (Segmenter uses 2).
        num_heads: Attention heads in those blocks.
        drop_path_rate: Stochastic depth in those blocks.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_classes: int,
        classifier_dim: int | None = None,
        depth: int = 2,
        num_heads: int = 8,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.proj_in = nn.Linear(in_dim, dim)
        self.class_embed = nn.Parameter(torch.zeros(1, num_classes, dim))
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop_path=drop_path_rate)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.proj_patch = nn.Linear(classifier_dim or dim, dim, bias=False)
        self.proj_classes = nn.Linear(dim, dim, bias=False)
        self.mask_norm = nn.LayerNorm(num_classes)
        trunc_normal_(self.class_embed, std=0.02)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the normed patch map (B, D, h, w) and unit-norm class embeddings (B, K, D)."""
        b, _, h, w = x.shape
        tokens = torch.cat(
            [self.proj_in(x.flatten(2).transpose(1, 2)), self.class_embed.expand(b, -1, -1)], 1
        )
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        patches, classes = tokens[:, : h * w], tokens[:, h * w :]
        classes = F.normalize(self.proj_classes(classes), dim=-1)
        return patches.transpose(1, 2).reshape(b, -1, h, w), classes

    def classify(self, features: Tensor, classes: Tensor) -> Tensor:
        """Masks = <normalised patch projection, normalised class embedding>, LayerNorm over K."""
        b, _, h, w = features.shape
        patches = F.normalize(self.proj_patch(features.flatten(2).transpose(1, 2)), dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # (B, N, K)
        return masks.transpose(1, 2).reshape(b, self.num_classes, h, w)

    def no_weight_decay(self) -> set[str]:
        return {"class_embed"}
