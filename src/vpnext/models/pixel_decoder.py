"""The pyramid half of the Mask2Former-style baseline: a simple feature pyramid and its pixel decoder.

Table III's "mask decoder with pyramid" row (> 2000 GFLOPs) is Mask2Former on a plain ViT that has
been given a pyramid (ViT-Adapter, PlainSeg). Ours builds the pyramid the way ViTDet (Li et al.,
2022) does from the final ViT map alone, and decodes it with Mask2Former's (Cheng et al., 2022)
multi-scale deformable-attention pixel decoder:

* :class:`SimpleFeaturePyramid` — 1/4 (two stride-2 transposed convs, LayerNorm + GELU between),
  1/8 (one), 1/16 (the map itself) and 1/32 (2x2 max-pool), each followed by a 1x1 and a 3x3 conv
  with LayerNorm to the decoder width (ViTDet's ``SimpleFeaturePyramid``).
* :class:`PixelDecoder` — the 1/8, 1/16 and 1/32 levels are projected (1x1 conv + GroupNorm),
  given sine position and level embeddings, and refined jointly by ``encoder_layers`` (6)
  deformable-attention encoder layers (8 heads, 4 points a level, FFN 1024 at width 256); the
  1/4 level gets an FPN lateral connection from the refined 1/8 level, and a 1x1 conv makes the
  per-pixel ``mask features`` the transformer decoder's queries are multiplied with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from vpnext.models.layers import group_norm
from vpnext.ops.ms_deform_attn import ms_deform_attn

__all__ = ["MSDeformAttn", "PixelDecoder", "SimpleFeaturePyramid", "sine_position_embedding"]


def _grid_coordinates(feature: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates ``((i + 0.5) / H, (j + 0.5) / W)`` of a map (..., H, W), each (H, W).

    Made from a cumulative sum over ones rather than from ``H`` and ``W`` as Python numbers, so that
    traced and exported graphs keep them symbolic (any input size).
    """
    ones = torch.ones_like(feature[(0,) * (feature.ndim - 2)], dtype=torch.float32)
    rows, cols = ones.cumsum(0), ones.cumsum(1)
    return (rows - 0.5) / rows[-1:, :], (cols - 0.5) / cols[:, -1:]


def sine_position_embedding(feature: Tensor, dim: int) -> Tensor:
    """Mask2Former's normalised 2-D sine embedding of a map (..., H, W): (dim, H, W), dim/2 channels
    for y, then dim/2 for x; position ``i`` of ``n`` is at ``(i + 0.5) / n * 2 pi`` (Mask2Former
    centres DETR's ``i + 1``)."""
    feats = dim // 2
    y, x = (c * (2 * math.pi) for c in _grid_coordinates(feature))
    dim_t = 10000 ** (2 * (torch.arange(feats, device=feature.device) // 2) / feats)
    pos_y, pos_x = y[..., None] / dim_t, x[..., None] / dim_t  # (H, W, feats)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=3).flatten(2)
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=3).flatten(2)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).to(feature.dtype)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's pyramid from one 1/16 map: levels 1/4, 1/8, 1/16, 1/32, all at width ``dim``.

    Args:
        in_dim: ViT width C.
        dim: Output width of every level (ViTDet and Mask2Former: 256).
    """

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        half, quarter = in_dim // 2, in_dim // 4
        scales = [
            (
                nn.Sequential(
                    nn.ConvTranspose2d(in_dim, half, 2, stride=2),
                    LayerNorm2d(half),
                    nn.GELU(),
                    nn.ConvTranspose2d(half, quarter, 2, stride=2),
                ),
                quarter,
            ),
            (nn.ConvTranspose2d(in_dim, half, 2, stride=2), half),
            (nn.Identity(), in_dim),
            (nn.MaxPool2d(2), in_dim),
        ]
        self.scales = nn.ModuleList(
            nn.Sequential(
                resample,
                nn.Conv2d(channels, dim, 1, bias=False),
                LayerNorm2d(dim),
                nn.Conv2d(dim, dim, 3, padding=1, bias=False),
                LayerNorm2d(dim),
            )
            for resample, channels in scales
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """The levels [1/4, 1/8, 1/16, 1/32] of the 1/16 map ``x`` (B, C, h, w)."""
        return [scale(x) for scale in self.scales]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with Deformable DETR's projections and initialisation.

    Args:
        dim: Width of queries and values.
        heads: Attention heads.
        levels: Feature levels sampled.
        points: Sampling points per head and level.
    """

    def __init__(self, dim: int, heads: int = 8, levels: int = 3, points: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads, self.levels, self.points = heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Offsets start on rays in `heads` directions, point p at distance p + 1 (in pixels of each
        # level); uniform attention weights.
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        rays = torch.stack([theta.cos(), theta.sin()], -1)
        rays = rays / rays.abs().max(-1, keepdim=True).values
        steps = torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = rays.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1) * steps
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: Tensor,
        reference: Tensor,
        value: Tensor,
        spatial_shapes: list[tuple[int, int]],
        sizes: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``query`` (B, Q, dim) around ``reference`` (Q, 2), ``(x, y)`` in [0, 1] and the
        same on every level, into ``value`` (B, N, dim), the levels flattened in ``spatial_shapes``
        order. ``sizes`` (L, 2) holds ``(W_l, H_l)`` as a tensor (made from ``spatial_shapes`` if
        not given; the pixel decoder passes one that traces symbolically)."""
        batch, queries, _ = query.shape
        value = self.value_proj(value).unflatten(-1, (self.heads, -1))
        offsets = self.sampling_offsets(query).view(batch, queries, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(batch, queries, self.heads, self.levels, self.points)
        # Offsets are in pixels of each level: divide by (W_l, H_l).
        if sizes is None:
            sizes = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference[None, :, None, None, None, :] + offsets / sizes[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn(value, spatial_shapes, locations, weights))


class _EncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then an FFN; post-norm (Deformable DETR)."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn_dim: int) -> None:
        super().__init__()
        self.attn = MSDeformAttn(dim, heads, levels, points)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Linear(ffn_dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference: Tensor,
        spatial_shapes: list[tuple[int, int]],
        sizes: Tensor,
    ) -> Tensor:
        src = self.norm1(src + self.attn(src + pos, reference, src, spatial_shapes, sizes))
        return self.norm2(src + self.ffn(src))


def _reference_points(levels: list[Tensor]) -> Tensor:
    """Pixel centres ``(x, y)`` in [0, 1] of every position of every level, concatenated: (N, 2)."""
    points = []
    for level in levels:
        y, x = _grid_coordinates(level)
        points.append(torch.stack((x.flatten(), y.flatten()), -1))
    return torch.cat(points).to(levels[0].dtype)


def _level_sizes(levels: list[Tensor]) -> Tensor:
    """(L, 2): ``(W_l, H_l)`` of each level as a tensor (symbolic in traced graphs)."""
    sizes = []
    for level in levels:
        ones = torch.ones_like(level[0, 0], dtype=torch.float32)
        sizes.append(torch.stack((ones[0].sum(), ones[:, 0].sum())))
    return torch.stack(sizes).to(levels[0].dtype)


class PixelDecoder(nn.Module):
    """Mask2Former's multi-scale deformable-attention pixel decoder.

    Args:
        dim: Width of the pyramid levels, of the decoder (``conv_dim``) and of the mask features.
        heads: Heads of the deformable attention.
        points: Sampling points per head and level.
        ffn_dim: Hidden width of the encoder layers' FFN.
        num_layers: Encoder layers.
    """

    #: The levels refined by deformable attention: 1/32, 1/16, 1/8 (the last three of the pyramid).
    LEVELS = 3

    def __init__(
        self, dim: int, heads: int = 8, points: int = 4, ffn_dim: int = 1024, num_layers: int = 6
    ) -> None:
        super().__init__()
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 1), group_norm(dim)) for _ in range(self.LEVELS)
        )
        self.level_embed = nn.Parameter(torch.empty(self.LEVELS, dim))
        self.layers = nn.ModuleList(
            _EncoderLayer(dim, heads, self.LEVELS, points, ffn_dim) for _ in range(num_layers)
        )
        self.lateral = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), group_norm(dim))
        self.output = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), group_norm(dim), nn.ReLU())
        self.mask_features = nn.Conv2d(dim, dim, 1)
        nn.init.normal_(self.level_embed)
        for conv in (*(proj[0] for proj in self.input_proj), self.mask_features):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, pyramid: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Mask features (B, dim, H/4, W/4) and the refined levels [1/32, 1/16, 1/8] from the
        pyramid [1/4, 1/8, 1/16, 1/32]."""
        coarse = pyramid[:0:-1]  # 1/32, 1/16, 1/8
        spatial_shapes = [(f.shape[-2], f.shape[-1]) for f in coarse]  # not int(): traces stay symbolic
        src = torch.cat(
            [proj(f).flatten(2).transpose(1, 2) for proj, f in zip(self.input_proj, coarse, strict=True)], 1
        )
        pos = torch.cat(
            [
                sine_position_embedding(f, src.shape[-1]).flatten(1).T + self.level_embed[i]
                for i, f in enumerate(coarse)
            ]
        )
        reference, sizes = _reference_points(coarse), _level_sizes(coarse)
        for layer in self.layers:
            src = layer(src, pos, reference, spatial_shapes, sizes)
        levels = [
            level.transpose(1, 2).unflatten(-1, shape)
            for level, shape in zip(
                src.split([h * w for h, w in spatial_shapes], 1), spatial_shapes, strict=True
            )
        ]
        quarter = pyramid[0]
        fpn = self.lateral(quarter) + F.interpolate(
            levels[-1], size=quarter.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.mask_features(self.output(fpn)), levels
