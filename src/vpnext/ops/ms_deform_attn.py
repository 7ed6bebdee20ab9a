"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021) in pure PyTorch.

The core of Mask2Former's pixel decoder. Each query reads, per head, ``P`` points on each of ``L``
feature levels and sums them with its attention weights (softmax over the ``L * P`` samples)::

    out[q, h] = sum_{l, p} A[q, h, l, p] * bilinear(value_l[h], loc[q, h, l, p])

``loc`` is normalised to ``[0, 1]`` per level (``(x, y)``, ``0`` the left/top edge of the first
pixel, ``1`` the right/bottom edge of the last), and a sample reads zero outside the map: the
CUDA kernel of Deformable DETR and ``F.grid_sample(..., align_corners=False, padding_mode="zeros")``
agree on both. Bilinear sampling is ``F.grid_sample`` (one call per level); the weighted sum is a
batched matrix product, so ``FlopCounterMode`` counts it, and ``vpnext.models.macs`` counts
4 MACs per sample and channel for the bilinear interpolation, as it does for the deformable conv.
No custom kernel: the op traces, exports and compiles as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ms_deform_attn"]


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    locations: Tensor,
    weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention.

    Args:
        value: (B, N, heads, d) values of all levels, flattened row-major and concatenated in
            ``spatial_shapes`` order (N = sum of H_l * W_l).
        spatial_shapes: (H_l, W_l) of each level.
        locations: (B, Q, heads, L, P, 2) sampling locations ``(x, y)`` in ``[0, 1]`` per level.
        weights: (B, Q, heads, L, P) attention weights (already normalised by the caller).

    Returns:
        (B, Q, heads * d).
    """
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    if levels != len(spatial_shapes):
        raise ValueError(f"locations has {levels} levels, spatial_shapes {len(spatial_shapes)}")
    if sum(h * w for h, w in spatial_shapes) != value.shape[1]:
        raise ValueError(f"value has {value.shape[1]} positions, spatial_shapes sum to another count")
    grids = 2.0 * locations - 1.0  # grid_sample's [-1, 1] with align_corners=False
    sampled = []
    start = 0
    for level, (height, width) in enumerate(spatial_shapes):
        # (B, H_l*W_l, heads, d) -> (B*heads, d, H_l, W_l)
        level_value = value[:, start : start + height * width].permute(0, 2, 3, 1)
        level_value = level_value.reshape(batch * heads, dim, height, width)
        start += height * width
        # (B, Q, heads, P, 2) -> (B*heads, Q, P, 2)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (B*heads, d, Q, L*P) times (B*heads, Q, L*P, 1): the weighted sum as one batched matmul.
    stacked = torch.cat(sampled, dim=-1).permute(0, 2, 1, 3)  # (B*heads, Q, d, L*P)
    flat_weights = weights.transpose(1, 2).reshape(batch * heads, queries, levels * points, 1)
    out = torch.matmul(stacked, flat_weights).squeeze(-1)  # (B*heads, Q, d)
    return out.view(batch, heads, queries, dim).transpose(1, 2).reshape(batch, queries, heads * dim)
