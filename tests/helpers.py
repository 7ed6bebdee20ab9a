"""Helpers shared by the test modules (test modules import from here, never from each other).

Imported by conftest.py for every test, so it imports Lightning and the tools only inside the helpers
that need them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

if TYPE_CHECKING:
    from vpnext.training import SegmentationModule


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"

TINY = dict(backbone="vit_tiny_patch16_224", img_size=64, decoder_dim=32, pyramid_dim=16, num_heads=4)


SMALL_RUN_ARGS = [
    "--trainer.accelerator=cpu",
    "--trainer.max_steps=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.num_sanity_val_steps=0",
    "--model.decoder_dim=32",
    "--model.pyramid_dim=16",
    "--model.num_heads=4",
    "--model.warmup_iters=1",
    "--data.crop_size=64",
    "--data.batch_size=4",
    "--data.num_workers=0",
    "--data.synthetic_kwargs={num_train: 8, num_val: 4, image_size: 64}",
]


def only_run_dir(parent: Path, suffix: str) -> Path:
    (run,) = [p for p in parent.iterdir() if p.name.endswith(suffix)]
    return run


def section(markdown: str, title: str) -> list[str]:
    lines = markdown.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {title}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def table_rows(markdown: str, title: str) -> list[str]:
    return [line for line in section(markdown, title)[4:] if line.startswith("| ")]


SMALL_MODEL = dict(
    num_classes=4, backbone="test_vit", img_size=64, decoder_dim=32, pyramid_dim=16, num_heads=4, aux="vcr"
)


def write_small_checkpoint(path: Path, data: dict | None = None, **overrides: object) -> Path:
    """A checkpoint whose deformable convs sample at non-zero offsets (theirs start at zero);
    ``data`` replaces its data module's hyperparameters (synthetic data, test_vit normalisation)."""
    torch.manual_seed(0)
    from vpnext.training import SegmentationModule  # Lightning: only for the tests that use it

    module = SegmentationModule(**{**SMALL_MODEL, **overrides})
    for conv in module.model.modules():
        if isinstance(conv, nn.Conv2d) and conv.out_channels % 18 == 0 and conv.weight.abs().sum() == 0:
            nn.init.normal_(conv.weight, std=0.05)
            if conv.bias is not None:
                nn.init.normal_(conv.bias, std=1.0)
    torch.save(
        {
            "hyper_parameters": dict(module.hparams),
            "state_dict": module.state_dict(),
            "datamodule_hyper_parameters": data or {"dataset": "synthetic", "normalize_for": "test_vit"},
        },
        path,
    )
    return path


class OneHotOfChannel0(nn.Module):
    """Stand-in network: channel 0 of the image holds the class id to predict."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ids = images[:, 0].round().long().clamp(0, self.num_classes - 1)
        return F.one_hot(ids, self.num_classes).permute(0, 3, 1, 2).float() * 10


def sample_with_ids(image_ids: torch.Tensor, label: torch.Tensor) -> dict:
    image = image_ids.float().expand(3, *image_ids.shape).clone()
    return {
        "image": image,
        "label": label,
        "meta": {"img_size": tuple(image_ids.shape), "ori_size": tuple(label.shape), "image_path": "x.png"},
    }


def one_hot_module(num_classes: int = 3) -> SegmentationModule:
    from vpnext.training import SegmentationModule

    module = SegmentationModule(num_classes=num_classes, eval_window="whole", aux="none", **TINY)
    module.model = OneHotOfChannel0(num_classes)
    return module


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def make_folder(root: Path, ids: tuple[str, ...] = ("a", "b", "c"), split: str = "train") -> Path:
    """A valid 3-class folder dataset of 40x60 images."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in ids:
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(
            root / "images" / split / f"{i}.png"
        )
        Image.fromarray(rng.integers(0, 3, (40, 60), dtype=np.uint8)).save(
            root / "annotations" / split / f"{i}.png"
        )
    (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (root / "meta.json").write_text(json.dumps({"classes": ["bg", "x", "y"]}))
    return root


def vpnext_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m vpnext.cli``."""
    script = Path(sys.executable).with_name("vpnext")
    if script.is_file():
        return [str(script)]
    found = shutil.which("vpnext")
    return [found] if found else [sys.executable, "-m", "vpnext.cli"]


SETTING = {"dataset": "synthetic", "num_classes": 4, "crop_size": [64, 64]}


def report_model(**switches) -> dict:
    base = dict(
        backbone="vit_tiny_patch16_224",
        aux="vcr",
        aux_layers=2,
        head="context",
        upsampler="bilinear",
        hiclr_depth=0,
        replay_stop_grad=True,
    )
    return {**base, **switches}


def write_run(
    root: Path, name: str, miou: float | None, finished: str = "2025-01-01T00:00:00+00:00", steps=30, **sw
):
    # Directory names deliberately say nothing true: rows must come from the switches.
    folder = root / name
    folder.mkdir(parents=True)
    record = {
        "schema_version": 1,
        "stage": "fit",
        "split": "val",
        "mIoU": miou,
        "best_mIoU": None if miou is None else miou + 0.01,
        "model": report_model(**sw),
        "data": SETTING,
        "optimizer_steps": steps,
        "finished_at": finished,
    }
    (folder / "results.json").write_text(json.dumps(record))
    return folder


VITUP = str(REPO_ROOT / "sweeps/vitup.yaml")


def use_fake(monkeypatch: pytest.MonkeyPatch, fake: FakeVpnext) -> None:
    """Replace the runner's process launcher by ``fake`` (exit code of the ``vpnext fit`` it stands for)."""
    from vpnext.tools import sweep as runner

    monkeypatch.setattr(runner, "_execute", lambda argv, env, log=None: fake(argv, env).returncode)


class FakeVpnext:
    """Stands in for the ``vpnext fit`` subprocess: records calls, writes results.json on success."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.fail_on = fail_on

    def __call__(self, argv, env, **kwargs):
        self.calls.append((argv, env.get("CUDA_VISIBLE_DEVICES")))
        run_dir = Path(next(a for a in argv if a.startswith("--run.dir=")).split("=", 1)[1])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text("partial")
        if self.fail_on and self.fail_on in " ".join(argv):
            return subprocess.CompletedProcess(argv, 1)
        (run_dir / "results.json").write_text(json.dumps({"mIoU": 0.5}))
        return subprocess.CompletedProcess(argv, 0)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
