"""Helpers shared by the test modules (test modules import from here, never from each other)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

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


def write_small_checkpoint(path: Path, **overrides: object) -> Path:
    """A checkpoint whose deformable convs sample at non-zero offsets (theirs start at zero)."""
    torch.manual_seed(0)
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
            "datamodule_hyper_parameters": {"dataset": "synthetic", "normalize_for": "test_vit"},
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
    module = SegmentationModule(num_classes=num_classes, eval_window="whole", aux="none", **TINY)
    module.model = OneHotOfChannel0(num_classes)
    return module
