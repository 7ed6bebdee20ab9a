"""SegDataModule as LightningCLI builds it: typed, documented arguments and the experiment configs."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from vpnext.data import DatasetError, SegDataModule

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "experiments" / "data").glob("*.yaml"))
# Paper protocol crops (Sec. V and DESIGN.md section 2).
PAPER_CROPS = {
    "pascal_context.yaml": 480,
    "coco_stuff.yaml": 512,
    "coco_stuff_640.yaml": 640,
    "cityscapes.yaml": 768,
    "cityscapes_1024.yaml": 1024,
    "voc_aug.yaml": 512,
    "ade20k.yaml": 512,
}


def test_every_init_argument_is_documented() -> None:
    doc = inspect.getdoc(SegDataModule) or ""
    args_section = doc.split("Args:", 1)[1]
    for name in list(inspect.signature(SegDataModule.__init__).parameters)[1:]:
        assert f"\n    {name}: " in args_section, name


def _parse(config: Path, **overrides: str) -> SegDataModule:
    # The CLI fixes the data-module class, so ``data:`` holds the init arguments directly.
    parser = ArgumentParser()
    parser.add_class_arguments(SegDataModule, "data")
    cfg = yaml.safe_load(config.read_text())
    cfg["data"].update(overrides)
    parsed = parser.parse_object(cfg)
    return parser.instantiate_classes(parsed).data


def test_configs_cover_every_dataset() -> None:
    datasets = {yaml.safe_load(c.read_text())["data"]["dataset"] for c in CONFIGS}
    assert datasets == {
        "pascal_context",
        "coco_stuff",
        "cityscapes",
        "voc_aug",
        "ade20k",
        "camvid",
        "synthetic",
        "folder",
    }


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_instantiates(config: Path, tmp_path: Path) -> None:
    overrides = {}
    if config.stem == "folder":
        (tmp_path / "meta.json").write_text(json.dumps({"classes": ["a", "b"]}))
        overrides["root"] = str(tmp_path)
    dm = _parse(config, **overrides)
    assert isinstance(dm, SegDataModule)
    if config.name in PAPER_CROPS:
        side = PAPER_CROPS[config.name]
        assert dm.crop_size == (side, side)
        assert dm.slide_crop == (side, side) and dm.slide_stride[0] < side
    assert dm.num_classes == len(dm.class_names) > 0
    assert dm.ignore_index == 255


def test_defaults_and_overrides() -> None:
    dm = SegDataModule("pascal_context", root="anywhere")  # no disk access before setup()
    assert (dm.num_classes, dm.crop_size, dm.test_scale) == (59, (480, 480), (2048, 520))
    assert (dm.slide_crop, dm.slide_stride) == ((480, 480), (320, 320))
    dm = SegDataModule("cityscapes", root="x", crop_size=(512, 1024), test_resize=False, slide_crop=1024)
    assert dm.crop_size == (512, 1024) and dm.test_scale is None and dm.slide_crop == (1024, 1024)
    with pytest.raises(ValueError, match="needs a root"):
        SegDataModule("ade20k")
    with pytest.raises(ValueError, match="unknown dataset"):
        SegDataModule("imagenet", root="x")


def test_missing_root_fails_in_setup_with_its_name(tmp_path: Path) -> None:
    dm = SegDataModule("ade20k", root=str(tmp_path / "ADEChallengeData2016"), num_workers=0)
    with pytest.raises(DatasetError, match="ADEChallengeData2016"):
        dm.setup("fit")
