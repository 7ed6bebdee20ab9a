"""Stop a fit at the first step whose loss is not finite, before that step's update."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from vpnext.checkpoint_io import (
    NonFiniteLossError,
)
from vpnext.training.checkpoints import LastCheckpoint

__all__ = ["NonFiniteLossGuard"]


class NonFiniteLossGuard(Callback):
    """Stops training at the first step whose loss is not finite, before that step's update.

    The check runs before the backward pass, so no non-finite gradient reaches the weights and
    the last checkpoint (written from finite weights) stays the latest. The error names the step
    and every logged loss term (``train/loss_main``, ``train/loss_aux_<i>``, ``train/loss_align``)
    that is not finite. Under DDP the ranks agree first (the gradients are averaged, so one
    rank's NaN would reach every rank's weights).
    """

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([int(bad)], device=loss.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item() and not bad:
                raise NonFiniteLossError(
                    f"non-finite loss on another rank at step {trainer.global_step}; "
                    "stopped before the update"
                )
        if not bad:
            return
        terms = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if name.startswith("train/loss_") and value.numel() == 1
        }
        named = [f"{name} = {value}" for name, value in sorted(terms.items()) if not math.isfinite(value)]
        finite = [name for name, value in sorted(terms.items()) if math.isfinite(value)]
        what = ", ".join(named) if named else f"train/loss = {float(loss.detach())}"
        also = f" (finite: {', '.join(finite)})" if finite and named else ""
        last = next((c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)), None)
        kept = f"; last checkpoint kept: {last.path}" if last is not None and last.path.is_file() else ""
        raise NonFiniteLossError(
            f"non-finite loss at step {trainer.global_step}: {what}{also}; stopped before the update{kept}"
        )
