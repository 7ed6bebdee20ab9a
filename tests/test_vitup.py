"""ViTUp: the hidden stride-4 embedding (DESIGN.md 1.2) and the HiCLR refiner (1.6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vpnext.models import VPNeXt
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


@pytest.mark.parametrize(
    ("mode", "patch_size", "shift"), [("folded", 16, 0.0), ("shared", 16, 6.0), ("folded", 14, 0.0)]
)
def test_impulse_lands_on_the_quarter_grid(mode: str, patch_size: int, shift: float) -> None:
    """A bright 4x4 pixel block (one 1/4 cell) is seen by the 1/4 map where the grid says it is.

    ``folded`` (the default) puts it exactly on the grid that the upsampled ``h``, the x4 logit
    resize and the labels use, for patch 16 and for DINOv2's patch 14; ``shared`` sees it
    ``grid_offset`` = 6 px up/left of its position.
    """
    embed = HiddenPyramidEmbedding(8, 4, patch_size=patch_size, mode=mode).double().eval()
    embed.norm = torch.nn.Identity()
    patch = torch.nn.Conv2d(3, 8, patch_size, stride=patch_size).double()
    with torch.no_grad():
        patch.weight.fill_(1.0)
        patch.bias.zero_()
        embed.proj.weight.fill_(1.0)
        embed.proj.bias.zero_()
    assert embed.grid_offset == shift
    size = 64 if patch_size == 16 else 56  # a multiple of lcm(patch, 4)
    for m_row, m_col in [(5, 7), (6, 9), (9, 4)]:
        images = torch.zeros(1, 3, size, size, dtype=torch.float64)
        images[..., 4 * m_row : 4 * m_row + 4, 4 * m_col : 4 * m_col + 4] = 1.0
        with torch.no_grad():
            tokens, pyramid = embed(images, patch)
        assert pyramid.shape[-2:] == (size // 4, size // 4)
        assert tokens.shape[-2:] == (size // patch_size, size // patch_size)
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


@pytest.mark.parametrize("patch", [14, 16])
def test_patch_tokens_and_the_quarter_grid_agree_on_pixel_positions(patch: int) -> None:
    """``h``: resizing the 1/patch token grid to the 1/4 grid of an image padded to lcm(patch, 4)
    keeps pixel positions. Each token holds its centre's pixel coordinate (patch·i + (patch-1)/2);
    bilinear resizing is exact on a linear ramp, so every 1/4 cell away from the clamped border
    reads its own centre, 4j + 1.5."""
    size = 4 * patch  # 64 or 56: tiles both grids
    n = size // patch
    ramp = (patch * torch.arange(n, dtype=torch.float64) + (patch - 1) / 2).reshape(1, 1, 1, n)
    h = upsample_to(ramp.expand(1, 1, n, n), (size // 4, size // 4))[0, 0, 0]
    centres = _quarter_cell_centre(torch.arange(size // 4, dtype=torch.float64))
    inside = (centres >= (patch - 1) / 2) & (centres <= size - (patch + 1) / 2)
    assert inside.sum() >= size // 8  # most cells: only those within half a token of the edge are clamped
    torch.testing.assert_close(h[inside], centres[inside], atol=1e-9, rtol=0)


def test_patch_sizes_the_stride4_map_can_take() -> None:
    HiddenPyramidEmbedding(192, 16, patch_size=14)  # folded: (14 - 4) / 2 = 5 px of padding all round
    with pytest.raises(ValueError, match="divisible by 4"):
        HiddenPyramidEmbedding(192, 16, patch_size=14, mode="shared")
    with pytest.raises(ValueError, match="even patch size"):
        HiddenPyramidEmbedding(192, 16, patch_size=15)


def test_dinov2_patch14_backbone_runs_with_vitup_and_vcr() -> None:
    """timm's DINOv2 (patch 14, 4 register tokens), random weights, cut to 4 blocks."""
    model = VPNeXt(
        3,
        backbone="vit_small_patch14_reg4_dinov2",
        img_size=56,
        backbone_kwargs={"depth": 4},
        decoder_dim=32,
        pyramid_dim=16,
        num_heads=4,
        aux="vcr",
        aux_layers=2,
    )
    assert model.backbone.patch_size == 14 and model.pad_multiple == 28
    images = torch.randn(2, 3, 45, 61)  # padded to 56 x 84: 4 x 6 tokens, a 14 x 21 quarter map
    shapes = []
    model.pyramid_embed.register_forward_hook(
        lambda m, i, o: shapes.append((o[0].shape[-2:], o[1].shape[-2:]))
    )
    out = model.forward_train(images)
    assert shapes == [((4, 6), (14, 21))]  # both grids tile the padded 56 x 84 exactly
    assert out.logits.shape == (2, 3, 45, 61) and [a.shape for a in out.aux_logits] == [(2, 3, 45, 61)] * 2
    out.logits.mean().backward()
    assert model.pyramid_embed.proj.weight.grad is not None
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (2, 3, 45, 61)


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
