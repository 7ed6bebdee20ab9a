"""Backbone wrapper: intermediate features, local weights with pos-embed resampling, hub errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch
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
    with pytest.raises(ValueError, match="not a timm VisionTransformer"):
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
