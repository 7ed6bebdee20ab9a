"""Small building blocks shared by the decoder modules."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count ≤ ``max_groups`` that divides ``channels``.

    GroupNorm rather than BatchNorm: the decoder must behave the same at batch 1 on a CPU, with
    gradient accumulation and across DDP ranks without SyncBN.
    """
    return nn.GroupNorm(math.gcd(channels, max_groups), channels)


class ConvNormAct(nn.Sequential):
    """Conv (no bias) → GroupNorm → GELU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            group_norm(out_channels),
            nn.GELU(),
        )


def zero_init_offset_conv(in_channels: int, num_convs: int = 1, bias: bool = True) -> nn.Conv2d:
    """3x3 conv predicting offsets (9 taps x (dy, dx)) for ``num_convs`` deformable convs, zero-initialised.

    With zero weights and bias the deformable convs it drives start as plain 3x3 convs.
    ``num_convs`` stacks the offsets of several deformable convs as output channels (18 each);
    the input is shared, not split.
    """
    conv = nn.Conv2d(in_channels, 18 * num_convs, 3, padding=1, bias=bias)
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def pad_to_multiple(images: Tensor, multiple: int) -> Tensor:
    """Zero-pad right/bottom so that H and W are multiples of ``multiple``."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(images, (0, pw, 0, ph)) if ph or pw else images


def upsample_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners=False), a no-op when the size already matches."""
    return (
        x
        if tuple(x.shape[-2:]) == tuple(size)
        else F.interpolate(x, size, mode="bilinear", align_corners=False)
    )
