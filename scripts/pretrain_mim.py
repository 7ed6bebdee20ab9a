"""Masked-image-modelling pre-training of a random-init ViT on a config's own training frames.

A screen for the CamVid recipe (docs/results/camvid.md): can a few minutes of self-supervised
pre-training on the frames the recipe trains on give its from-scratch ViT better features for an
unseen video? The objective is SimMIM's (Xie et al., CVPR 2022): a share of the patch tokens is
replaced by a learnt mask token before the position embedding, the whole ViT runs, and a linear
layer predicts the masked patches' pixels from the final tokens. Where SimMIM and MAE differ we
take MAE's pixel target (He et al., CVPR 2022): each patch's pixels normalised by their own mean
and variance, mean squared error over the masked patches. Masking is per 16-pixel patch at 60 %
(SimMIM's ratio), AdamW (betas 0.9/0.95, weight decay 0.05), linear warmup over the first tenth
of the steps, then cosine decay to zero.

The frames, crops and augmentation are the config's training pipeline (``data`` section,
``val_groups`` held out as in the fit, so the held-out video is never seen); the architecture is
its ``model.backbone`` (+ ``backbone_kwargs``, ``backbone_init``) with the position-embedding grid
of its training crop. The ViT's weights are written as a timm state dict that the fit loads::

    python scripts/pretrain_mim.py --config experiments/camvid/recipe.yaml --steps 1000 \
        --out runs/mim/vit.safetensors
    vpnext fit --config experiments/camvid/recipe.yaml --model.pretrained=runs/mim/vit.safetensors

The two commands' wall times add up: within the recipe's 30 minutes, the fit's steps pay for these.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import lightning
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file
from torch import Tensor, nn

from vpnext.data import SegDataModule
from vpnext.models.backbone import create_vit


class MaskedImageModel(nn.Module):
    """A timm ViT, a learnt mask token and a linear pixel head (SimMIM's layout)."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.patch = int(vit.patch_embed.proj.kernel_size[0])
        width = int(vit.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(width, 3 * self.patch**2)

    def forward(self, images: Tensor, mask: Tensor) -> Tensor:
        """Predicted pixels (B, N, 3 p^2) of every patch; ``mask`` (B, h, w) is True where hidden."""
        vit = self.vit
        tokens = vit.patch_embed(images)  # (B, h, w, C): the model is built with dynamic_img_size
        tokens = torch.where(mask[..., None], self.mask_token.to(tokens), tokens)
        x = vit.norm_pre(vit._pos_embed(tokens))
        x = vit.norm(vit.blocks(x))[:, vit.num_prefix_tokens :]
        return self.head(x)


def patch_targets(images: Tensor, patch: int) -> Tensor:
    """Each patch's pixels (B, N, 3 p^2), normalised by the patch's own mean and variance (MAE)."""
    pixels = F.unfold(images, patch, stride=patch).transpose(1, 2)
    mean, var = pixels.mean(-1, keepdim=True), pixels.var(-1, keepdim=True)
    return (pixels - mean) / (var + 1e-6).sqrt()


def random_mask(batch: int, grid: tuple[int, int], ratio: float, generator: torch.Generator) -> Tensor:
    """(B, h, w) boolean masks, each hiding ``round(ratio * h * w)`` patches chosen at random."""
    count = grid[0] * grid[1]
    hidden = round(ratio * count)
    order = torch.rand(batch, count, generator=generator).argsort(1)
    mask = torch.zeros(batch, count, dtype=torch.bool)
    mask.scatter_(1, order[:, :hidden], True)
    return mask.view(batch, *grid)


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def pretrain(
    config: dict[str, Any],
    steps: int,
    out: Path,
    lr: float = 1.0e-3,
    mask_ratio: float = 0.6,
    log_every: int = 50,
) -> dict[str, float]:
    """Run the pre-training and save the ViT; returns the first and last logged losses."""
    seed = int(config.get("seed_everything") or 0)
    lightning.seed_everything(seed, verbose=False)
    model_cfg, data_cfg = dict(config.get("model") or {}), dict(config.get("data") or {})
    backbone = model_cfg.get("backbone", "vit_tiny_patch16_224")
    data_cfg.setdefault("normalize_for", backbone)  # as the fit links it from model.backbone
    datamodule = SegDataModule(**data_cfg)
    datamodule.setup("fit")
    crop = datamodule.crop_size
    vit = create_vit(
        backbone,
        img_size=crop,
        drop_path_rate=float(model_cfg.get("drop_path_rate") or 0.0),
        arch_kwargs=model_cfg.get("backbone_kwargs"),
        init=model_cfg.get("backbone_init", "timm"),
    )
    model = MaskedImageModel(vit).train()
    # Weight decay on weight matrices, none on vectors and the position embedding.
    groups: dict[bool, list[nn.Parameter]] = {True: [], False: []}
    for name, param in model.named_parameters():
        groups[param.ndim >= 2 and "pos_embed" not in name].append(param)
    optimizer = torch.optim.AdamW(
        [{"params": groups[True], "weight_decay": 0.05}, {"params": groups[False], "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, warmup))
    loader = datamodule.train_dataloader()
    generator = torch.Generator().manual_seed(seed)
    losses: dict[str, float] = {}
    step, epoch, start = 0, 0, time.perf_counter()
    while step < steps:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            images = batch["image"]
            grid = (images.shape[-2] // model.patch, images.shape[-1] // model.patch)
            mask = random_mask(images.shape[0], grid, mask_ratio, generator)
            pred = model(images, mask)
            target = patch_targets(images[..., : grid[0] * model.patch, : grid[1] * model.patch], model.patch)
            hidden = mask.flatten(1)
            loss = ((pred - target) ** 2).mean(-1)[hidden].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if step == 1 or step % log_every == 0 or step == steps:
                losses.setdefault("first", loss.item())
                losses["last"] = loss.item()
                rate = step / (time.perf_counter() - start)
                print(
                    f"mim: step {step}/{steps} | epoch {epoch} | loss {loss.item():.4f} | {rate:.2f} it/s",
                    flush=True,
                )
            if step >= steps:
                break
        epoch += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in vit.state_dict().items()}, str(out))
    losses["wall_time_s"] = time.perf_counter() - start
    print(f"mim: {steps} steps in {losses['wall_time_s']:.0f} s; ViT weights: {out}", flush=True)
    return losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="a vpnext fit config (its model and data)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1.0e-3)
    parser.add_argument("--mask-ratio", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=None, help="overrides the config's seed_everything")
    parser.add_argument(
        "--backbone-init", choices=("timm", "mimetic"), default=None, help="overrides model.backbone_init"
    )
    parser.add_argument("--out", required=True, type=Path, help="where to write the ViT (.safetensors)")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    if args.seed is not None:
        config["seed_everything"] = args.seed
    if args.backbone_init is not None:
        config.setdefault("model", {})["backbone_init"] = args.backbone_init
    pretrain(config, args.steps, args.out, lr=args.lr, mask_ratio=args.mask_ratio)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
