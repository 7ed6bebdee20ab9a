"""Upsamplers compared in Table II (DESIGN.md 1.6).

Every upsampler maps the head's 1/16 features ``y_z`` (and, for HiCLR, the hidden 1/4 pyramid
feature) to the map the classifier runs on; the model then resizes the logits to the input.

    * :class:`BilinearUpsampler` (HiCLR depth 0): identity; the classifier runs at 1/16 and its
      logits are upsampled x16.
    * :class:`MockHiCLR` (``upsampler='mock_hiclr'``): Table II's "Mock pyramid" row as the paper
      defines it: a mock 1/4 feature made from the high-level 1/16 map (two stride-2 transposed
      convs, normalised like ViTUp's real one), refined by HiCLR with ``hiclr_depth`` iterations
      (2 in the paper). Everything else is the real-pyramid row's: the rows differ only in where
      the 1/4 feature comes from.
    * :class:`MockPyramid` (``upsampler='mock_pyramid'``): a ViTDet-style simple feature pyramid
      without HiCLR: two stride-2 transposed convs give 1/8 and 1/4 maps, fused top-down (FPN
      style, 3x3 smoothing convs); the classifier runs at 1/4. The mock pyramid of the mask
      decoder's Table III row, and of Table II before it was read as the paper defines it.
    * :class:`~vpnext.models.vitup.HiCLR` (``upsampler='hiclr'``): the real pyramid from ViTUp.

Every upsampler outputs the decoder width D (``out_dim == in_dim``), so the classifier reads the
same number of channels in every Table II row, whatever the pyramid width: the rows differ in
the upsampler only, not in classifier capacity.
"""

from __future__ import annotations

from torch import Tensor, nn

from vpnext.models.layers import ConvNormAct, group_norm, upsample_to
from vpnext.models.vitup import HiCLR


class BilinearUpsampler(nn.Module):
    """No learned upsampling: classify at 1/16, upsample logits (paper: "Bilinear", 0 layers)."""

    needs_pyramid = False

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.out_dim = in_dim

    def forward(self, y: Tensor, pyramid: Tensor | None = None) -> Tensor:
        return y


class MockPyramid(nn.Module):
    """Mock pyramid from resized high-level features (two extra levels, 1/8 and 1/4).

    Args:
        in_dim: Width D of the head's 1/16 features (and of the output).
        dim: Width of the pyramid levels; the last 3x3 smoothing conv maps the 1/4 level back to D.
    """

    needs_pyramid = False

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.out_dim = in_dim
        self.up8 = nn.Sequential(nn.ConvTranspose2d(in_dim, dim, 2, stride=2), group_norm(dim), nn.GELU())
        self.up4 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2), group_norm(dim), nn.GELU())
        self.lateral16 = ConvNormAct(in_dim, dim, 1)
        self.smooth8 = ConvNormAct(dim, dim, 3)
        self.smooth4 = ConvNormAct(dim, in_dim, 3)

    def forward(self, y: Tensor, pyramid: Tensor | None = None) -> Tensor:
        f8 = self.up8(y)
        f4 = self.up4(f8)
        p8 = self.smooth8(f8 + upsample_to(self.lateral16(y), tuple(f8.shape[-2:])))
        return self.smooth4(f4 + upsample_to(p8, tuple(f4.shape[-2:])))


class MockQuarterFeature(nn.Module):
    """A mock 1/4-resolution feature from the 1/16 map: two stride-2 transposed convs (1/16 to 1/8
    to 1/4, GELU between) and a GroupNorm, as ViTUp normalises its real one.

    Args:
        in_dim: Width of the 1/16 map.
        dim: Pyramid width of the 1/4 feature.
    """

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.up8 = nn.Sequential(nn.ConvTranspose2d(in_dim, dim, 2, stride=2), group_norm(dim), nn.GELU())
        self.up4 = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.norm = group_norm(dim)

    def forward(self, y: Tensor) -> Tensor:
        return self.norm(self.up4(self.up8(y)))


class MockHiCLR(nn.Module):
    """HiCLR refining a mock 1/4 feature made from the high-level map (Table II, "Mock pyramid").

    Args:
        in_dim: Width D of the head's 1/16 features ``y_z`` (and of the output).
        dim: Pyramid width of the 1/4 path.
        depth: HiCLR iterations T ≥ 1 (the paper's row: 2).
        deform_impl: Deformable-conv implementation.
        fuse_kernel: Kernel of HiCLR's final fusion.
    """

    needs_pyramid = False

    def __init__(
        self, in_dim: int, dim: int, depth: int = 2, deform_impl: str = "auto", fuse_kernel: int = 1
    ) -> None:
        super().__init__()
        self.out_dim = in_dim
        self.mock = MockQuarterFeature(in_dim, dim)
        self.hiclr = HiCLR(in_dim, dim, depth, deform_impl, fuse_kernel)

    def forward(self, y: Tensor, pyramid: Tensor | None = None) -> Tensor:
        return self.hiclr(y, self.mock(y))
