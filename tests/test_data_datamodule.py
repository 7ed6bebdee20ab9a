"""SegDataModule as LightningCLI builds it: typed, documented arguments and the experiment configs."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from vpnext.data import DatasetError, SegDataModule
from vpnext.data.base import read_image

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


@pytest.mark.parametrize(
    ("backbone", "mean", "std"),
    [
        ("vit_tiny_patch16_224", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # AugReg weights
        ("vit_large_patch16_384", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ("deit_tiny_patch16_224", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
        (None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # no backbone: ImageNet
    ],
)
def test_normalisation_follows_the_backbone(
    backbone: str | None, mean: tuple, std: tuple, tmp_path: Path
) -> None:
    """mean/std come from the backbone's timm pretrained config, for training and evaluation."""
    dm = SegDataModule(
        dataset="synthetic",
        root=str(tmp_path),
        normalize_for=backbone,
        crop_size=32,
        num_workers=0,
        synthetic_kwargs={"num_train": 2, "num_val": 1, "image_size": 32},
    )
    assert dm.mean == pytest.approx(mean) and dm.std == pytest.approx(std)
    dm.prepare_data()
    dm.setup("fit")
    item = dm.val_set[0]  # the evaluation pipeline (synthetic data: no test resize)
    raw = torch.from_numpy(read_image(Path(item["meta"]["image_path"])).copy()).permute(2, 0, 1).float() / 255
    expected = (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(item["image"], expected, atol=1e-5, rtol=0)


def test_explicit_normalisation_overrides_the_backbone() -> None:
    dm = SegDataModule(
        dataset="synthetic", normalize_for="vit_tiny_patch16_224", mean=(0.1, 0.2, 0.3), std=(1, 1, 1)
    )
    assert dm.mean == pytest.approx((0.1, 0.2, 0.3)) and dm.std == pytest.approx((1.0, 1.0, 1.0))


def _run_script(path: Path, source: str) -> subprocess.CompletedProcess:
    """Write ``source`` (dedented) to ``path`` and run it in a fresh interpreter, within 60 s."""
    path.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_workers_left_at_exit_do_not_hang_the_interpreter(tmp_path) -> None:
    """Workers ignore SIGTERM (pre-emption); multiprocessing's exit handler stops daemonic children
    with SIGTERM and joins them, so a loader iterator still alive at exit (as after a pre-emption
    stop, seen once in tests/test_resume.py) used to hang the process forever."""
    done = _run_script(
        tmp_path / "exit_with_workers.py",
        """
            import builtins
            from torch.utils.data import DataLoader
            from vpnext.data.workers import register_worker_cleanup, seed_worker

            register_worker_cleanup()
            loader = DataLoader(list(range(100)), batch_size=2, num_workers=2, worker_init_fn=seed_worker)
            builtins.kept_alive = iter(loader)
            next(builtins.kept_alive)
            """,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DataLoader worker" not in done.stderr


@pytest.mark.slow
def test_loader_workers_run_opencv_on_one_thread_without_hanging(tmp_path) -> None:
    """OpenCV runs on one thread wherever the loaders fork workers, set before they fork: setting it
    inside a forked worker, after the parent's OpenCV pool has run, waits forever (seen once, in the
    suite under xdist). The parent's pool runs first here, so that case is the one tested."""
    done = _run_script(
        tmp_path / "opencv_threads.py",
        f"""
            import cv2
            import numpy as np
            from vpnext.data import SegDataModule

            cv2.setNumThreads(2)
            frame = np.zeros((1024, 1024, 3), np.uint8)
            for _ in range(3):
                cv2.resize(frame, (700, 700))  # the parent's pool has run
            dm = SegDataModule(
                dataset="synthetic", root={str(tmp_path / "data")!r}, crop_size=32, batch_size=2,
                num_workers=1, synthetic_kwargs={{"num_train": 4, "num_val": 2, "image_size": 48}},
            )
            dm.prepare_data()
            dm.setup("fit")
            for loader in (dm.train_dataloader(), dm.val_dataloader()):
                assert next(iter(loader))["image"].ndim == 4
            print("threads", cv2.getNumThreads())
            """,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "threads 1" in done.stdout
