"""Record this process's rank and world size once Lightning knows them (for the CLI's error lines)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from vpnext.run_dir import JOB

__all__ = ["JobRecorder"]


class JobRecorder(Callback):
    """Records the global rank and world size in :data:`JOB` once Lightning knows them."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        JOB.update(rank=int(trainer.global_rank), world_size=int(trainer.world_size))
