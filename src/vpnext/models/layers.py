"""Small building blocks shared by the decoder modules."""

from __future__ import annotations

import math

import torch
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
    """Zero-pad right/bottom so that H and W are multiples of ``multiple``.

    While exported or traced (``vpnext export``) the pad is always in the graph, zero-width or
    not: a branch on the size would freeze the example's case into a graph meant for every size.
    """
    h, w = images.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if torch.compiler.is_exporting() or torch.jit.is_tracing():
        return F.pad(images, (0, pw, 0, ph))
    return F.pad(images, (0, pw, 0, ph)) if ph or pw else images


def crop_to(x: Tensor, height: int, width: int) -> Tensor:
    """The top-left ``height`` x ``width`` of ``x`` (..., H, W), undoing :func:`pad_to_multiple`.

    While exported or traced the rows and columns are gathered by index: a slice lets the
    exporter branch on whether it is a no-op (no padding), which would tie the graph to the
    example's case.
    """
    if torch.compiler.is_exporting() or torch.jit.is_tracing():
        rows = torch.arange(height, device=x.device)
        cols = torch.arange(width, device=x.device)
        return x.index_select(-2, rows).index_select(-1, cols)
    return x[..., :height, :width]


def upsample_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners=False), a no-op when the size already matches."""
    return (
        x
        if tuple(x.shape[-2:]) == tuple(size)
        else F.interpolate(x, size, mode="bilinear", align_corners=False)
    )
