"""Mimetic initialisation of a random-init ViT's self-attention (``backbone_init='mimetic'``)."""

from __future__ import annotations

import pytest
import torch

from vpnext.models import ViTBackbone, VPNeXt
from vpnext.models.init import QK_BETA, VO_BETA
from vpnext.training import SegmentationModule


def _products(backbone: ViTBackbone, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (d, d) query-key product of each head (stacked) and the value-projection product."""
    attn = backbone.vit.blocks[block].attn
    dim, heads = attn.qkv.in_features, attn.num_heads
    width = dim // heads
    query, key, value = attn.qkv.weight.detach().view(3, dim, dim)
    qk = torch.stack(
        [query[h * width : (h + 1) * width].T @ key[h * width : (h + 1) * width] for h in range(heads)]
    )
    return qk, value.T @ attn.proj.weight.detach().T


@pytest.mark.parametrize("block", [0, 11])
def test_mimetic_products_are_near_plus_and_minus_identity(block: int) -> None:
    torch.manual_seed(0)
    backbone = ViTBackbone("vit_tiny_patch16_224", init="mimetic")
    qk, vo = _products(backbone, block)
    dim = vo.shape[0]
    eye = torch.eye(dim, dtype=torch.bool)
    # Every head's query-key product is its own rank-k fit of alpha Z + beta I: a positive diagonal
    # well above its off-diagonal noise, holding at least the k/d share of beta that the identity
    # alone would give it and less than all of it.
    width = dim // qk.shape[0]
    for head in qk:
        assert head[eye].mean() > 4 * head[~eye].std()
        assert QK_BETA * width / dim < head[eye].mean().item() < QK_BETA
    # The value-projection product is a full-rank fit: its diagonal is -beta.
    assert vo[eye].mean().item() == pytest.approx(-VO_BETA, rel=0.05)
    assert vo[~eye].std().item() < 0.1 * VO_BETA


def test_timm_init_has_no_such_structure() -> None:
    torch.manual_seed(0)
    qk, vo = _products(ViTBackbone("vit_tiny_patch16_224"), 0)
    eye = torch.eye(vo.shape[0], dtype=torch.bool)
    assert abs(qk.sum(0)[eye].mean().item()) < 0.05 and abs(vo[eye].mean().item()) < 0.05


def test_mimetic_init_follows_the_seed_and_leaves_the_rest_to_timm() -> None:
    def build(seed: int) -> VPNeXt:
        torch.manual_seed(seed)
        return VPNeXt(3, backbone="vit_tiny_patch16_224", backbone_init="mimetic", img_size=64)

    first, again, other = build(0), build(0), build(1)
    for name, weight in first.state_dict().items():
        assert torch.equal(weight, again.state_dict()[name]), name
    qkv = "backbone.vit.blocks.0.attn.qkv.weight"
    assert not torch.equal(first.state_dict()[qkv], other.state_dict()[qkv])
    # The MLPs, norms and biases keep timm's draw: the same under both initialisations.
    torch.manual_seed(0)
    timm_init = VPNeXt(3, backbone="vit_tiny_patch16_224", img_size=64)
    assert torch.equal(
        first.backbone.vit.blocks[0].attn.qkv.bias, timm_init.backbone.vit.blocks[0].attn.qkv.bias
    )
    with torch.no_grad():
        assert torch.isfinite(first(torch.randn(1, 3, 64, 80))).all()


def test_module_takes_backbone_init() -> None:
    module = SegmentationModule(3, backbone="vit_tiny_patch16_224", backbone_init="mimetic", img_size=64)
    qk, _ = _products(module.model.backbone, 0)
    assert qk.sum(0).diagonal().mean() > 0.5
    assert module.hparams["backbone_init"] == "mimetic"


def test_mimetic_init_with_pretrained_weights_or_unknown_name_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="random-init"):
        ViTBackbone("vit_tiny_patch16_224", pretrained=tmp_path / "weights.safetensors", init="mimetic")
    with pytest.raises(ValueError, match="must be one of timm, mimetic"):
        ViTBackbone("vit_tiny_patch16_224", init="xavier")
