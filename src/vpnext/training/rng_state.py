"""Random states in the checkpoint, so that a resumed fit draws what an uninterrupted one would."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["RNGStateCheckpoint"]


def _python_scalar(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (checkpoints store plain containers)."""
    return value.item() if hasattr(value, "item") else value


class RNGStateCheckpoint(Callback):
    """Saves the global random states in checkpoints; restores them at the first step after resume.

    The data order and augmentations do not depend on them (see :mod:`vpnext.data.resume`); the
    model's own randomness (dropout, stochastic depth) does. Restoring at the first training batch
    rather than at load time skips whatever runs in between (setup, a sanity check).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [
                np_state[0],
                torch.from_numpy(np_state[1].astype(np.int64)),
                *map(_python_scalar, np_state[2:]),
            ],
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        state, self._pending = self._pending, None
        if not state:
            return
        torch.set_rng_state(state["torch"])
        if (
            state.get("cuda")
            and torch.cuda.is_available()
            and len(state["cuda"]) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(state["cuda"])
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
