"""ViTUp: the hidden stride-4 embedding (DESIGN.md 1.2) and the HiCLR refiner (1.6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vpnext.models.backbone import ViTBackbone
from vpnext.models.vitup import HiCLR, HiddenPyramidEmbedding


@pytest.fixture(scope="module")
def backbone() -> ViTBackbone:
    torch.manual_seed(0)
    return ViTBackbone("vit_tiny_patch16_224", img_size=64).eval()


def test_stride4_subsampled_is_bitwise_the_stride16_embedding(backbone: ViTBackbone) -> None:
    images = torch.randn(2, 3, 64, 96)
    proj = backbone.patch_proj
    embed = HiddenPyramidEmbedding(backbone.embed_dim, 16)
    e4 = embed.stride4(images, proj.weight, proj.bias)
    assert e4.shape[-2:] == (16, 24)
    assert torch.equal(e4[..., ::4, ::4], proj(images))


def test_symmetric_padding_breaks_the_equality(backbone: ViTBackbone) -> None:
    images = torch.randn(1, 3, 64, 64)
    proj = backbone.patch_proj
    e4 = F.conv2d(F.pad(images, (6, 6, 6, 6)), proj.weight, proj.bias, stride=4)
    assert not torch.allclose(e4[..., ::4, ::4], proj(images), atol=1e-3)


def test_folded_projection_equals_projecting_the_full_width_map(backbone: ViTBackbone) -> None:
    images = torch.randn(2, 3, 48, 80)
    embed = HiddenPyramidEmbedding(backbone.embed_dim, 16, mode="folded")
    with torch.no_grad():
        embed.proj.bias.normal_()
        e4 = embed.stride4(images, backbone.patch_proj.weight, backbone.patch_proj.bias)
        unfolded = embed.proj(e4)
        folded = embed.stride4(
            images, *embed.folded_weights(backbone.patch_proj.weight, backbone.patch_proj.bias)
        )
    torch.testing.assert_close(folded, unfolded, atol=1e-5, rtol=0)


def test_folded_and_shared_modes_agree(backbone: ViTBackbone) -> None:
    images = torch.randn(1, 3, 64, 80)
    folded = HiddenPyramidEmbedding(backbone.embed_dim, 16, mode="folded")
    shared = HiddenPyramidEmbedding(backbone.embed_dim, 16, mode="shared")
    shared.load_state_dict(folded.state_dict())
    with torch.no_grad():
        tokens_f, pyr_f = folded(images, backbone.patch_proj)
        tokens_s, pyr_s = shared(images, backbone.patch_proj)
    assert torch.equal(tokens_f, tokens_s)
    assert pyr_f.shape == (1, 16, 16, 20)
    torch.testing.assert_close(pyr_f, pyr_s, atol=1e-4, rtol=0)


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

    with torch.no_grad():
        torch.testing.assert_close(hiclr(y, pyramid), reference(), atol=1e-10, rtol=1e-10)
