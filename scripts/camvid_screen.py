"""Screen CamVid training settings fast: a short in-memory training loop of the real model and loss.

This is how the recipe in ``experiments/camvid/recipe.yaml`` was chosen (docs/results/camvid.md):
each setting trains for a few hundred steps on one core and is scored on the val split. It is a
*screening* loop, not the recipe: frames are held in memory at the training resolution, the
augmentation is a random rescale, crop and flip only (no photometric distortion, no
``cat_max_ratio``), the learning rate follows the same linear warm-up + poly decay, and val mIoU
is computed at the training resolution against nearest-resized labels (the recipe scores at the
native 480x360). Compare settings with each other, not with recipe numbers.

Usage::

    python scripts/camvid_screen.py --root ../shared/data/camvid \\
        'lr1e-3 {"lr": 1e-3}' 'lr1e-3 weighted {"lr": 1e-3, "weighted": true}'

Each argument is ``NAME JSON``: keyword arguments of :func:`screen` (``steps``, ``lr``,
``batch_size``, ``size``, ``crop``, ``scale``, ``warmup``, ``weighted``) and of
:class:`vpnext.training.SegmentationModule` (``loss``, ``aux``, ``upsampler``, widths…).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vpnext.data.base import read_image, read_label
from vpnext.data.catalog import IGNORE_INDEX
from vpnext.data.class_stats import class_pixel_counts, class_weights
from vpnext.data.datasets import CamVidDataset
from vpnext.training import SegmentationModule
from vpnext.training.optim import build_optimizer

NUM_CLASSES = 11
MODEL = dict(
    backbone="vit_tiny_patch16_224",
    decoder_dim=128,
    pyramid_dim=32,
    num_heads=4,
    aux="vcr",
    upsampler="hiclr",
    loss="ce",
)


def load_split(root: str, split: str, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, H, W) scaled to [-1, 1] (ViT-Tiny's 0.5/0.5) and train-id labels (N, H, W),
    at ``size`` (width, height)."""
    dataset = CamVidDataset(root, split, check_files="none")
    lut, k = dataset.spec.label_lut(), dataset.spec.num_classes
    images, labels = [], []
    for sample in dataset.samples:
        image = Image.fromarray(read_image(sample.image_path)).resize(size, Image.BILINEAR)
        label = Image.fromarray(read_label(sample.label_path, lut, k)).resize(size, Image.NEAREST)
        images.append(np.asarray(image))
        labels.append(np.asarray(label))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, torch.from_numpy(np.stack(labels).astype(np.int64))


def enet_weights(root: str) -> list[float]:
    pixels, image_pixels, _ = class_pixel_counts("camvid", root, "train")
    return [round(float(w), 3) for w in class_weights(pixels, image_pixels, "enet")]


def screen(
    root: str,
    steps: int = 300,
    lr: float = 1e-3,
    batch_size: int = 8,
    size: tuple[int, int] = (240, 180),
    crop: tuple[int, int] = (176, 240),
    scale: tuple[float, float] = (0.75, 1.5),
    warmup: int = 30,
    weighted: bool = False,
    seed: int = 0,
    **model_kwargs,
) -> dict:
    """Train for ``steps`` and return val mIoU, per-class IoU and losses."""
    torch.manual_seed(seed)
    x, y = load_split(root, "train", tuple(size))
    xv, yv = load_split(root, "val", tuple(size))
    weights = enet_weights(root) if weighted else None
    module = SegmentationModule(
        num_classes=NUM_CLASSES, class_weight=weights, img_size=tuple(crop), **{**MODEL, **model_kwargs}
    )
    module.train()
    optimizer = build_optimizer(module.model, lr, 0.05, 1.0, 1.0)
    base = [group["lr"] for group in optimizer.param_groups]
    g = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    for step in range(steps):
        index = torch.randint(0, len(x), (batch_size,), generator=g)
        factor = float(torch.empty(1).uniform_(*scale, generator=g))
        h, w = int(size[1] * factor), int(size[0] * factor)
        images = F.interpolate(x[index], (h, w), mode="bilinear", align_corners=False)
        labels = F.interpolate(y[index][:, None].float(), (h, w), mode="nearest")[:, 0].long()
        ch, cw = min(crop[0], h), min(crop[1], w)
        top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
        images, labels = (
            images[..., top : top + ch, left : left + cw],
            labels[..., top : top + ch, left : left + cw],
        )
        if torch.rand(1, generator=g) < 0.5:
            images, labels = images.flip(-1), labels.flip(-1)
        for group, lr0 in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = lr0 * min(1.0, (step + 1) / warmup) * (1 - step / steps)
        loss = module.criterion(module.model(images), labels)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    module.eval()
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(xv), 8):
            prediction, truth = module.model(xv[i : i + 8]).argmax(1), yv[i : i + 8]
            valid = truth != IGNORE_INDEX
            pairs = truth[valid] * NUM_CLASSES + prediction[valid]
            confusion += torch.bincount(pairs, minlength=NUM_CLASSES**2).view(NUM_CLASSES, NUM_CLASSES)
    iou = confusion.diag() / (confusion.sum(0) + confusion.sum(1) - confusion.diag()).clamp(min=1)
    return {
        "mIoU": 100 * iou.mean().item(),
        "iou": [round(100 * v, 1) for v in iou.tolist()],
        "loss_per_50_steps": [round(float(np.mean(losses[i : i + 50])), 3) for i in range(0, steps, 50)],
        "seconds": round(time.perf_counter() - start),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="../shared/data/camvid")
    parser.add_argument("settings", nargs="+", help="NAME JSON, e.g. 'lr1e-3 {\"lr\": 1e-3}'")
    args = parser.parse_args(argv)
    for setting in args.settings:
        name, _, kwargs = setting.partition(" ")
        result = screen(args.root, **json.loads(kwargs or "{}"))
        print(json.dumps({"name": name, **result}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
