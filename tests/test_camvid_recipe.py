"""The CamVid configs: the ablation scale is the recipe minus the schedule, and the class weights are
what scripts/class_weights.py computes from the training labels."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vpnext.data.class_stats import class_pixel_counts, class_weights

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"
ABLATION_SWITCHES = {"aux", "aux_layers", "head", "upsampler", "hiclr_depth", "replay_stop_grad"}


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / "experiments" / "camvid" / name).read_text())


def test_ablation_scale_is_the_recipe_with_a_shorter_schedule() -> None:
    recipe, ablation = _load("recipe.yaml"), _load("ablation.yaml")
    # A sweep's variant must survive the overlay.
    assert not ABLATION_SWITCHES & set(ablation["model"])
    for key, value in ablation["model"].items():
        assert recipe["model"].get(key, value) == value, key
    assert ablation["data"].items() >= {k: v for k, v in recipe["data"].items()}.items()
    assert ablation["trainer"]["max_steps"] < recipe["trainer"]["max_steps"]
    # The recipe is the full VPNeXt.
    assert recipe["model"]["aux"] == "vcr" and recipe["model"]["upsampler"] == "hiclr"


@pytest.mark.skipif(not CAMVID.is_dir(), reason="shared CamVid copy not present")
@pytest.mark.parametrize("config", ["recipe.yaml", "ablation.yaml"])
def test_class_weights_are_the_enet_weights_of_the_frames_trained_on(config: str) -> None:
    """Weights from the train split without the held-out video(s): nothing is read off val."""
    loaded = _load(config)
    held_out = loaded["data"].get("val_groups") or []
    pixels, image_pixels, names = class_pixel_counts("camvid", str(CAMVID), "train", held_out)
    weights = class_weights(pixels, image_pixels, "enet")
    assert names[0] == "Sky" and len(names) == 11
    assert loaded["model"]["class_weight"] == pytest.approx(weights.tolist(), abs=5e-4)


def test_camvid_configs_validate_on_an_unseen_video() -> None:
    for config in ("recipe.yaml", "ablation.yaml"):
        assert _load(config)["data"]["val_groups"] == ["0006R0"], config
