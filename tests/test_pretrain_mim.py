"""scripts/pretrain_mim.py: masked-image-modelling pre-training whose ViT the fit loads."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from scripts.pretrain_mim import MaskedImageModel, main, patch_targets, pretrain, random_mask
from vpnext.models import VPNeXt
from vpnext.models.backbone import create_vit


def test_masks_hide_the_asked_share_and_differ_per_image() -> None:
    mask = random_mask(4, (6, 10), 0.6, torch.Generator().manual_seed(0))
    assert mask.shape == (4, 6, 10)
    assert mask.flatten(1).sum(1).tolist() == [36] * 4
    assert not torch.equal(mask[0], mask[1])


def test_targets_are_per_patch_normalised_pixels() -> None:
    images = torch.rand(2, 3, 32, 48) * 5 + 3
    targets = patch_targets(images, 16)
    assert targets.shape == (2, 6, 3 * 16 * 16)
    torch.testing.assert_close(targets.mean(-1), torch.zeros(2, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.std(-1), torch.ones(2, 6), atol=1e-3, rtol=0)
    # Patch 0 holds the top-left 16x16 pixels of every channel.
    first = images[0, :, :16, :16].reshape(-1)
    torch.testing.assert_close(targets[0, 0], (first - first.mean()) / first.var().add(1e-6).sqrt())


def test_hidden_patches_reach_the_vit_only_as_the_mask_token() -> None:
    model = MaskedImageModel(create_vit("vit_tiny_patch16_224", img_size=(32, 48), arch_kwargs={"depth": 1}))
    mask = torch.zeros(1, 2, 3, dtype=torch.bool)
    mask[0, 1, 2] = True
    images = torch.randn(1, 3, 32, 48)
    changed = images.clone()
    changed[..., 16:, 32:] = torch.randn(3, 16, 16)  # only the hidden patch's pixels
    with torch.no_grad():
        torch.testing.assert_close(model(images, mask), model(changed, mask))
        assert not torch.allclose(
            model(images, torch.zeros_like(mask)), model(changed, torch.zeros_like(mask))
        )


@pytest.mark.slow
def test_pretraining_lowers_the_loss_and_the_fit_loads_its_vit(tmp_path) -> None:
    config = {
        "seed_everything": 0,
        "model": {
            "backbone": "vit_tiny_patch16_224",
            "backbone_init": "mimetic",
            "backbone_kwargs": {"depth": 4},
        },
        "data": {"dataset": "synthetic", "crop_size": [64, 96], "batch_size": 2, "num_workers": 0},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "mim" / "vit.safetensors"
    losses = pretrain(yaml.safe_load(path.read_text()), 30, out)
    assert losses["last"] < 0.9 * losses["first"]
    model = VPNeXt(
        3,
        backbone="vit_tiny_patch16_224",
        backbone_kwargs={"depth": 4},
        img_size=(64, 96),
        pretrained=str(out),
    )
    saved = load_file(str(out))
    for name, weight in model.backbone.vit.state_dict().items():
        assert torch.equal(weight, saved[name]), name
    assert main(["--config", str(path), "--steps", "2", "--out", str(tmp_path / "again.safetensors")]) == 0
