"""Optimiser parameter groups and the warmup + poly learning-rate schedule (DESIGN.md, Sec. 2).

The recipe is the one plain-ViT segmentation codebases share (BEiT/ViT-Adapter/mmseg configs):
AdamW, weight decay on weight matrices only, layer-wise learning-rate decay down the ViT, a
larger learning rate for the randomly initialised decoder, and a per-iteration schedule of linear
warmup followed by polynomial decay to zero.

Choices where the paper is silent:
    * Layer ids follow BEiT/mmseg (``LayerDecayOptimizerConstructor``), which the paper's
      reference codebases use: the stem (patch embedding, position embedding, class/register
      tokens) is layer 0, block ``i`` is layer ``i + 1`` and the final norm is layer ``depth + 1``;
      layer ``l`` gets ``layer_decay ** (depth + 1 - l)``, so the last block trains at 0.9x and the
      final norm at 1x the base lr. The decoder gets ``decoder_lr_mult`` x the base lr.
    * The poly decay starts after the warmup and spans the remaining iterations (mmseg 1.x's
      ``LinearLR`` + ``PolyLR`` pair), reaching zero one step after the last optimiser step.
"""

from __future__ import annotations

from typing import Any

from timm.models import group_parameters
from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["build_optimizer", "build_param_groups", "build_scheduler", "warmup_poly_factor"]


def build_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    layer_decay: float = 0.9,
    decoder_lr_mult: float = 10.0,
) -> list[dict[str, Any]]:
    """Split a VPNeXt model's parameters into AdamW groups.

    Args:
        model: A :class:`~vpnext.models.VPNeXt` (anything with ``backbone.vit``, a timm ViT, and
            an optional ``no_weight_decay()`` returning parameter names relative to ``model``).
        lr: Base learning rate (that of the ViT's last block).
        weight_decay: Decoupled weight decay of weight matrices.
        layer_decay: Learning-rate factor per ViT layer going down from the top.
        decoder_lr_mult: Learning-rate multiplier of every parameter outside the ViT.

    Returns:
        Param-group dicts with ``params``, ``lr``, ``weight_decay``, ``lr_scale`` (relative to
        ``lr``) and a ``name`` such as ``backbone.layer_03.decay`` or ``decoder.no_decay``
        (Lightning's ``LearningRateMonitor`` logs each group under its name).
    """
    # timm.optim (about 0.4 s to import) only when an optimiser is built, not for `vpnext fit --help`.
    from timm.optim import param_groups_layer_decay

    vit = model.backbone.vit
    no_decay = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    # Names relative to the wrapper below ("vit.<name>"); reg_token is 3-D, so only the name list
    # keeps it out of weight decay.
    vit_no_decay = {n.removeprefix("backbone.") for n in no_decay if n.startswith("backbone.vit.")}
    vit_no_decay |= {f"vit.{n}" for n in vit.no_weight_decay()}

    wrapper = _BeitLayerIds(vit)
    # timm marks its no-decay groups only by weight_decay=0, which with weight_decay=0 would be
    # every group: ask for a non-zero decay, read the kind off it, then set the real value.
    groups = param_groups_layer_decay(
        wrapper,
        weight_decay=1.0,
        no_weight_decay_list=sorted(vit_no_decay),
        layer_decay=layer_decay,
    )
    # timm does not name its groups; name them by layer for readable lr logs.
    layer_of = wrapper.layer_ids()
    for group in groups:
        layer_id = layer_of[id(group["params"][0])]
        kind = "decay" if group["weight_decay"] > 0 else "no_decay"
        group["weight_decay"] = weight_decay if kind == "decay" else 0.0
        group["name"] = f"backbone.layer_{layer_id:02d}.{kind}"

    vit_params = {id(p) for p in vit.parameters()}
    decoder: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in vit_params:
            continue
        kind = "no_decay" if param.ndim <= 1 or name in no_decay else "decay"
        decoder[kind].append(param)
    for kind, params in decoder.items():
        if params:
            groups.append(
                {
                    "params": params,
                    "lr_scale": decoder_lr_mult,
                    "weight_decay": weight_decay if kind == "decay" else 0.0,
                    "name": f"decoder.{kind}",
                }
            )
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    return groups


class _BeitLayerIds(nn.Module):
    """Presents a timm ViT to ``param_groups_layer_decay`` with BEiT/mmseg layer ids.

    Stem (patch/position embeddings, class/register tokens) is layer 0, block ``i`` is layer
    ``i + 1`` and what follows the blocks (the final norm) is layer ``depth + 1``, so block ``i``
    gets ``layer_decay ** (depth - i)``. timm's own ViT matcher puts the final norm into the last
    block's layer, which shifts every factor by one layer (last block at 1.0 instead of 0.9).
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {
            "stem": r"^vit\.(?:cls_token|reg_token|dist_token|pos_embed|patch_embed|norm_pre|rope)",
            # Any key other than timm's "merge with the previous group" (99999,) sorts after the blocks.
            "blocks": [(r"^vit\.blocks\.(\d+)", None), (r"^vit\.norm\.", (100000,))],
        }

    def layer_ids(self) -> dict[int, int]:
        """Layer id of every parameter, keyed by ``id(param)`` (what timm assigns; default: top)."""
        by_name = group_parameters(self, self.group_matcher(), reverse=True)
        top = len(self.vit.blocks) + 1
        return {id(p): by_name.get(n, top) for n, p in self.named_parameters()}


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    layer_decay: float = 0.9,
    decoder_lr_mult: float = 10.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> Optimizer:
    """AdamW over :func:`build_param_groups` (see there for the arguments)."""
    groups = build_param_groups(model, lr, weight_decay, layer_decay, decoder_lr_mult)
    return AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)


def warmup_poly_factor(
    step: int, total_steps: int, warmup_steps: int, warmup_ratio: float = 1e-6, power: float = 1.0
) -> float:
    """Learning-rate factor of optimiser step ``step`` (0-based).

    Linear warmup from ``warmup_ratio`` to 1 over ``warmup_steps`` steps, then
    ``(1 - (step - warmup_steps) / (total_steps - warmup_steps)) ** power``, never below 0.

    Args:
        step: Index of the optimiser step the factor applies to.
        total_steps: Number of optimiser steps of the whole run.
        warmup_steps: Length of the warmup (0 disables it); at most ``total_steps``.
        warmup_ratio: Factor at step 0.
        power: Poly exponent (1.0 = linear decay).
    """
    if step < warmup_steps:
        return warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    return max(1.0 - (step - warmup_steps) / decay_steps, 0.0) ** power


def build_scheduler(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 1500,
    warmup_ratio: float = 1e-6,
    power: float = 1.0,
) -> LambdaLR:
    """A per-iteration :class:`~torch.optim.lr_scheduler.LambdaLR` of :func:`warmup_poly_factor`.

    Every group keeps its own base learning rate (layer decay, decoder multiplier); the factor
    scales them all alike.

    Raises:
        ValueError: If ``total_steps`` is not positive or the warmup is longer than the run.
    """
    if total_steps <= 0:
        raise ValueError(f"the schedule needs a positive number of steps, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_iters={warmup_steps} does not fit in a run of {total_steps} optimiser steps; "
            "lower model.warmup_iters or raise trainer.max_steps"
        )

    def factor(step: int) -> float:
        return warmup_poly_factor(step, total_steps, warmup_steps, warmup_ratio, power)

    return LambdaLR(optimizer, factor)
