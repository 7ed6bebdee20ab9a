"""ViTUp: the hidden stride-4 embedding (DESIGN.md 1.2) and the HiCLR refiner (1.6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vpnext.models.backbone import ViTBackbone
from vpnext.models.layers import upsample_to
from vpnext.models.vitup import HiCLR, HiddenPyramidEmbedding


@pytest.fixture(scope="module")
def backbone() -> ViTBackbone:
    torch.manual_seed(0)
    return ViTBackbone("vit_tiny_patch16_224", img_size=64).eval()


def test_shared_mode_subsamples_its_stride4_map_to_exactly_the_vit_tokens(backbone: ViTBackbone) -> None:
    """``shared`` (the paper's literal form): the ViT's tokens are ``e4[::4, ::4]``, bit for bit."""
    images = torch.randn(2, 3, 64, 96)
    proj = backbone.patch_proj
    embed = HiddenPyramidEmbedding(backbone.embed_dim, 16, mode="shared").eval()
    with torch.no_grad():
        tokens, pyramid = embed(images, proj)
        assert torch.equal(tokens, proj(images))
        # The 1/4 map is the projected full-width stride-4 map with right/bottom padding only.
        e4 = F.conv2d(F.pad(images, (0, 12, 0, 12)), proj.weight, proj.bias, stride=4)
        assert torch.equal(e4[..., ::4, ::4], tokens)
        torch.testing.assert_close(pyramid, embed.norm(embed.proj(e4)), atol=1e-5, rtol=0)
    assert pyramid.shape == (2, 16, 16, 24)


def test_folded_mode_is_the_projected_stride4_map_on_the_aligned_grid(backbone: ViTBackbone) -> None:
    """``folded``: tokens from the ViT's own conv; the 1/4 map = P·e4 with 6 px padding all round."""
    images = torch.randn(2, 3, 48, 80)
    proj = backbone.patch_proj
    embed = HiddenPyramidEmbedding(backbone.embed_dim, 16, mode="folded").eval()
    embed.norm = torch.nn.Identity()  # compare the linear part
    with torch.no_grad():
        embed.proj.bias.normal_()
        tokens, pyramid = embed(images, proj)
        e4 = F.conv2d(F.pad(images, (6, 6, 6, 6)), proj.weight, proj.bias, stride=4)
        reference = torch.einsum("dc,bchw->bdhw", embed.proj.weight.flatten(1), e4)
        reference = reference + embed.proj.bias[:, None, None]
    assert torch.equal(tokens, proj(images))
    assert pyramid.shape == (2, 16, 12, 20)
    torch.testing.assert_close(pyramid, reference, atol=1e-5, rtol=0)


def _centroid(response: torch.Tensor, cell_to_pixel) -> tuple[float, float]:
    """Response-weighted mean position, each cell placed at ``cell_to_pixel(index)``."""
    weights = response.clamp(min=0)
    rows = cell_to_pixel(torch.arange(response.shape[0], dtype=torch.float64))
    cols = cell_to_pixel(torch.arange(response.shape[1], dtype=torch.float64))
    total = weights.sum()
    return float((weights.sum(1) * rows).sum() / total), float((weights.sum(0) * cols).sum() / total)


def _quarter_cell_centre(j: torch.Tensor) -> torch.Tensor:
    """Pixel centre of 1/4 cell j on the grid of bilinear x4 resizing (align_corners=False)."""
    return 4 * j + 1.5


@pytest.mark.parametrize(("mode", "shift"), [("folded", 0.0), ("shared", 6.0)])
def test_impulse_lands_on_the_quarter_grid(mode: str, shift: float) -> None:
    """A bright 4x4 pixel block (one 1/4 cell) is seen by the 1/4 map where the grid says it is.

    ``folded`` (the default) puts it exactly on the grid that the upsampled ``h``, the x4 logit
    resize and the labels use; ``shared`` sees it ``grid_offset`` = 6 px up/left of its position.
    """
    embed = HiddenPyramidEmbedding(8, 4, mode=mode).double().eval()
    embed.norm = torch.nn.Identity()
    patch = torch.nn.Conv2d(3, 8, 16, stride=16).double()
    with torch.no_grad():
        patch.weight.fill_(1.0)
        patch.bias.zero_()
        embed.proj.weight.fill_(1.0)
        embed.proj.bias.zero_()
    assert embed.grid_offset == shift
    for m_row, m_col in [(5, 7), (6, 9), (9, 4)]:
        images = torch.zeros(1, 3, 64, 64, dtype=torch.float64)
        images[..., 4 * m_row : 4 * m_row + 4, 4 * m_col : 4 * m_col + 4] = 1.0
        with torch.no_grad():
            _, pyramid = embed(images, patch)
        row, col = _centroid(pyramid[0, 0], _quarter_cell_centre)
        centre_row, centre_col = 4 * m_row + 1.5, 4 * m_col + 1.5
        assert (row, col) == pytest.approx((centre_row - shift, centre_col - shift), abs=1e-9)


def test_upsampled_h_and_logits_share_the_pixel_grid() -> None:
    """The model's resizes keep positions: a 1/16 token centred on pixel 16i + 7.5 lands there on
    the 1/4 grid (``h``), and a 1/4 cell lands on pixel 4j + 1.5 in the full-resolution logits."""
    token = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    token[..., 2, 3] = 1.0
    h = upsample_to(token, (24, 24))[0, 0]
    assert _centroid(h, _quarter_cell_centre) == pytest.approx((16 * 2 + 7.5, 16 * 3 + 7.5), abs=1e-9)
    cell = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    cell[..., 5, 7] = 1.0
    logits = upsample_to(cell, (48, 48))[0, 0]
    assert _centroid(logits, lambda p: p) == pytest.approx((4 * 5 + 1.5, 4 * 7 + 1.5), abs=1e-9)


def test_patch_size_must_be_divisible_by_four() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        HiddenPyramidEmbedding(192, 16, patch_size=14)


def test_hiclr_offsets_are_one_3x3_conv_over_h_and_u() -> None:
    """The split offset conv computes ``conv3x3([h, u_{t-1}])`` of DESIGN.md 1.6 in every iteration."""
    torch.manual_seed(0)
    hiclr = HiCLR(in_dim=24, dim=8, depth=3).double().eval()  # float64: only the algebra differs
    with torch.no_grad():
        for p in hiclr.parameters():  # off the zero init, so the offsets matter
            p.add_(0.3 * torch.randn_like(p))
    y, pyramid = torch.randn(2, 24, 4, 6).double(), torch.randn(2, 8, 16, 24).double()

    def reference() -> torch.Tensor:
        h = F.interpolate(hiclr.lateral(y), pyramid.shape[-2:], mode="bilinear", align_corners=False)
        u = pyramid
        for t, step in enumerate(hiclr.steps):
            part = slice(18 * t, 18 * (t + 1))
            weight = torch.cat([hiclr.context_offsets.weight[part], step.offset_conv.weight], 1)
            offsets = F.conv2d(torch.cat([h, u], 1), weight, hiclr.context_offsets.bias[part], padding=1)
            assert offsets.abs().max() > 1  # offsets of a pixel and more: sampling really moves
            u = u + step.act(step.norm(step.deform(u, offsets)))
        return hiclr.fuse(torch.cat([u, h], 1))

    assert hiclr.fuse[0].out_channels == 24  # back to the decoder width D for the classifier

    with torch.no_grad():
        torch.testing.assert_close(hiclr(y, pyramid), reference(), atol=1e-10, rtol=1e-10)
