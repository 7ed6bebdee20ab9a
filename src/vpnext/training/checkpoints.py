"""The Trainer's checkpoint plugin and the ``last.ckpt`` callback.

* :class:`SafeCheckpointIO` writes every checkpoint atomically
  (:func:`vpnext.checkpoint_io.atomic_torch_save`), refuses to write non-finite weights (so the
  last checkpoint on disk is always a finite one) and loads ``weights_only``
  (:func:`vpnext.checkpoint_io.safe_load`); Lightning's own resume path goes through it.
* :class:`LastCheckpoint` keeps ``<dirpath>/last.ckpt``: at every validation, at the end, and on
  an optional step or time interval independent of validation.
"""

from __future__ import annotations

import errno
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from vpnext.checkpoint_io import (
    CheckpointWriteError,
    NonFiniteWeightsError,
    atomic_torch_save,
    first_non_finite,
    safe_load,
)

__all__ = ["LastCheckpoint", "SafeCheckpointIO"]


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin: atomic writes, ``weights_only`` reads (local paths)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` through a temporary file and an atomic rename."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        bad = first_non_finite(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise NonFiniteWeightsError(
                f"refused to write {path}: weight {bad} is not finite; the previous checkpoint is kept"
            )
        try:
            atomic_torch_save(checkpoint, Path(path))
        except OSError as err:
            reason = err.strerror or type(err).__name__
            code = errno.errorcode.get(err.errno or 0, "")
            raise CheckpointWriteError(
                f"cannot write checkpoint {path}: {reason}{f' ({code})' if code else ''}; the previous "
                "checkpoint there is kept; free space or fix the folder's permissions, then resume "
                "with --ckpt_path last"
            ) from None

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load with :func:`safe_load`; ``weights_only=False`` is refused, not honoured."""
        return safe_load(path, "cpu" if map_location is None else map_location)


class LastCheckpoint(ModelCheckpoint):
    """``<dirpath>/last.ckpt``: the latest weights and training state, one file overwritten in place.

    Written at every validation, at the end of training, and, when set, every
    ``every_n_train_steps`` optimiser steps or every ``train_time_interval`` of training
    (independent of validation). Lightning's ``save_last=True`` only refreshes ``last.ckpt`` when
    the monitored checkpoint was saved at the same step (i.e. improved), so it can hold stale
    weights; this callback keeps no score and overwrites one file instead.

    Args:
        dirpath: Checkpoint folder.
        every_n_train_steps: Also save every N optimiser steps (``None``: off).
        train_time_interval: Also save when this much training time has passed (``None``: off).
    """

    def __init__(
        self,
        dirpath: str,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
    ) -> None:
        if every_n_train_steps is not None and train_time_interval is not None:
            # Lightning's ModelCheckpoint takes one trigger; the step interval is the checked one.
            raise ValueError("set either a step interval or a time interval for last.ckpt, not both")
        super().__init__(
            dirpath=dirpath,
            filename="last",
            save_top_k=1,
            enable_version_counter=False,
            every_n_train_steps=every_n_train_steps,
            train_time_interval=train_time_interval,
        )
        self._has_interval = bool(every_n_train_steps) or train_time_interval is not None

    @property
    def path(self) -> Path:
        """``<dirpath>/last.ckpt``."""
        return Path(str(self.dirpath)) / "last.ckpt"

    def save_now(self, trainer: L.Trainer) -> Path:
        """Write ``last.ckpt`` for the current step (every rank must call this; rank 0 writes)."""
        trainer.save_checkpoint(str(self.path), weights_only=False)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = str(self.path)
        return self.path

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        # With an interval the parent saves only on that interval; validation still refreshes.
        if self._has_interval and not self._should_skip_saving_checkpoint(trainer):
            self.save_now(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # Steps after the last validation (max_steps not a multiple of the interval) still count.
        if self._last_global_step_saved != trainer.global_step:
            self.save_now(trainer)
