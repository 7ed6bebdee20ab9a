"""Backbone wrapper: intermediate features, local weights with pos-embed resampling, hub errors."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from tests.helpers import TINY
from vpnext.models import ViTBackbone, VPNeXt


def test_features_match_timm_forward_intermediates() -> None:
    backbone = ViTBackbone("vit_tiny_patch16_224", img_size=64).eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features, final = backbone(backbone.patch_proj(images), [2, 5])
        reference = backbone.vit.forward_intermediates(
            images, indices=[2, 5, 11], norm=False, intermediates_only=True
        )
        final_ref = backbone.vit.forward_features(images)[:, backbone.num_prefix_tokens :]
    torch.testing.assert_close(features[0], reference[0])
    torch.testing.assert_close(features[1], reference[1])
    torch.testing.assert_close(final, final_ref.transpose(1, 2).reshape(1, -1, 4, 6))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_from_another_image_size_are_resampled(tmp_path, suffix: str) -> None:
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False)  # 14x14 grid, with a head
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"vit{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)

    model = VPNeXt(3, **{**TINY, "img_size": 64}, pretrained=str(path)).eval()
    vit = model.backbone.vit
    assert vit.pos_embed.shape == (1, 1 + 4 * 4, 192)
    expected = resample_abs_pos_embed(state["pos_embed"], new_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(vit.pos_embed.detach(), expected)
    assert torch.equal(vit.blocks[3].attn.qkv.weight.detach(), state["blocks.3.attn.qkv.weight"])
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 70, 50))).all()


def test_missing_local_file_is_a_clear_error(tmp_path) -> None:
    from vpnext.models import PretrainedWeightsError

    with pytest.raises(PretrainedWeightsError, match="not found"):
        ViTBackbone("vit_tiny_patch16_224", pretrained=tmp_path / "nope.safetensors")


@pytest.mark.slow
def test_hub_weights_without_network_fail_with_one_line_naming_local_option(tmp_path) -> None:
    code = (
        "from vpnext.models import ViTBackbone\n"
        "try:\n    ViTBackbone('vit_tiny_patch16_224', pretrained=True)\n"
        "except Exception as e:\n    print(type(e).__name__ + ': ' + str(e))\n"
    )
    env = {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    assert lines[0].startswith("PretrainedWeightsError: ")
    assert "pretrained=/path/to/" in lines[0]


def test_non_vit_is_refused() -> None:
    with pytest.raises(ValueError, match="not a timm VisionTransformer or Eva"):
        ViTBackbone("resnet18")


def test_backbone_kwargs_override_the_timm_architecture() -> None:
    model = VPNeXt(3, **TINY, backbone_kwargs={"patch_size": 8, "depth": 4}).eval()
    assert model.backbone.patch_size == 8 and model.backbone.depth == 4
    with torch.no_grad():
        features, _ = model.backbone(model.backbone.patch_proj(torch.randn(1, 3, 32, 48)), [1])
    assert features[0].shape[-2:] == (4, 6)  # a stride-8 token grid
    assert model(torch.randn(1, 3, 30, 45)).shape == (1, 3, 30, 45)
    with pytest.raises(ValueError, match="cannot set"):
        VPNeXt(3, **TINY, backbone_kwargs={"img_size": 64})


#: Today's plain ViTs beside the classic one, cut to 3 blocks (random weights, no download): EVA-02
#: (timm Eva, patch 14, rotary + absolute embedding), DINOv3 (Eva, patch 16, rotary only, 4
#: register tokens), DINOv2 with registers (VisionTransformer, patch 14).
MODERN = {
    "eva02_tiny_patch14_224": 14,
    "vit_small_patch16_dinov3": 16,
    "vit_small_patch14_reg4_dinov2": 14,
}


@pytest.mark.parametrize("name", sorted(MODERN))
def test_modern_backbones_give_timms_own_features_at_any_grid(name: str) -> None:
    """Our pass from patch maps equals timm's ``forward_features`` (prefix tokens dropped) and its
    block outputs, at a grid the weights were not built for: the rotary embedding follows it."""
    torch.manual_seed(0)
    backbone = ViTBackbone(name, img_size=56, arch_kwargs={"depth": 3}).eval()
    patch = MODERN[name]
    assert backbone.patch_size == patch and backbone.depth == 3
    # timm's init leaves random attention nearly uniform, where rotary embeddings change nothing:
    # larger weights make the comparison see them (without the rope, both Eva cases fail).
    for module in backbone.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.2)
    images = torch.randn(2, 3, 5 * patch, 7 * patch)  # a 5x7 grid; built for 4x4
    blocks = []
    backbone.vit.blocks[1].register_forward_hook(lambda m, i, o: blocks.append(o))
    with torch.no_grad():
        (x_1,), x_z = backbone(backbone.patch_proj(images), [1])
        reference = backbone.vit.forward_features(images)
    prefix = backbone.num_prefix_tokens
    assert x_z.shape == (2, backbone.embed_dim, 5, 7)
    expected = reference[:, prefix:].transpose(1, 2).reshape(2, -1, 5, 7)
    torch.testing.assert_close(x_z, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x_1, blocks[0][:, prefix:].transpose(1, 2).reshape(2, -1, 5, 7))


TINY_DECODER = dict(decoder_dim=32, pyramid_dim=16, num_heads=4)


@pytest.mark.parametrize("name", sorted(MODERN))
def test_modern_backbones_load_a_local_timm_state_dict_exactly(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    source = timm.create_model(name, pretrained=False, depth=3, img_size=56)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = VPNeXt(
        3,
        **TINY_DECODER,
        backbone=name,
        pretrained=str(path),
        img_size=56,
        backbone_kwargs={"depth": 3},
        aux_layers=1,
    )
    state = loaded.backbone.vit.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(state[key], value), key


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODERN))
def test_modern_backbones_train_vpnext_with_vcr_and_vitup(name: str) -> None:
    """A few optimiser steps of VPNeXt (VCR on 2 layers, HiCLR 2) on each family, layer decay on."""
    from vpnext.training.optim import build_optimizer

    torch.manual_seed(0)
    arch = dict(backbone=name, img_size=56, backbone_kwargs={"depth": 3})
    model = VPNeXt(3, **arch, **TINY_DECODER, aux="vcr", aux_layers=[0, 1], hiclr_depth=2)
    optimizer = build_optimizer(model, lr=1e-3, layer_decay=0.9)
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    assert (
        len(grouped) == len({id(p) for p in grouped}) == sum(1 for p in model.parameters() if p.requires_grad)
    )
    images, labels = torch.randn(2, 3, 45, 61), torch.randint(0, 3, (2, 45, 61))
    losses = []
    for _ in range(3):
        out = model.forward_train(images)
        loss = F.cross_entropy(out.logits, labels) + sum(F.cross_entropy(a, labels) for a in out.aux_logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
