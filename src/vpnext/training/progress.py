"""Progress displays: a bar on a terminal, plain periodic lines in a log file.

Lightning's default bar (rich) draws nothing until the run ends when stdout is not a terminal
(``nohup``, SLURM, ``| tee``), and with ``max_steps`` and ``max_epochs=-1`` it reads
``Epoch 0/-2``. :func:`progress_bar` picks :class:`StepProgressBar` on a terminal and
:class:`LineProgress` otherwise; both name the optimiser step out of the run's total and the epoch
(Lightning's 0-based index, ``/last`` only when ``max_epochs`` bounds the run).
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

__all__ = ["LineProgress", "StepProgressBar", "position", "progress_bar"]


def total_steps(trainer: L.Trainer) -> int | None:
    """Optimiser steps the fit will run (``max_steps`` or ``max_epochs`` x batches), ``None`` if unbounded."""
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # no train loader yet, or one without a length
        return None
    return None if total is None or math.isinf(total) else int(total)


def position(trainer: L.Trainer) -> str:
    """``step 40/200 | epoch 3`` (``epoch 3/9`` when ``max_epochs`` bounds the run)."""
    total = total_steps(trainer)
    step = f"step {trainer.global_step}" + (f"/{total}" if total else "")
    epoch = f"epoch {trainer.current_epoch}"
    max_steps, max_epochs = trainer.max_steps, trainer.max_epochs
    if max_epochs is not None and max_epochs > 0 and (max_steps is None or max_steps < 0):
        epoch += f"/{max_epochs - 1}"
    return f"{step} | {epoch}"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, described by :func:`position` instead of ``Epoch N``."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(position(trainer))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.train_progress_bar.set_description(position(trainer), refresh=False)


class LineProgress(ProgressBar):
    """Progress for log files: one plain line every ``every_s`` seconds, never a redrawn bar.

    Training lines read ``vpnext: step 40/200 (20%) | epoch 3 | train/loss 0.812 | 2.31 it/s |
    elapsed 0:17 | ETA 1:09`` (the first step, then every ``every_s`` seconds, and the last step);
    each validation during a fit adds ``vpnext: validation at step 200: val/mIoU 0.2340``; a
    ``validate``/``test``/``predict`` run prints its batches the same way.

    Args:
        every_s: Seconds between lines (0: a line per step or batch).
        stream: Where lines go (default: ``sys.stdout``, where the bar would be).
    """

    def __init__(self, every_s: float = 30.0, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.every_s = every_s
        self.stream = stream
        self._enabled = True
        self._started = self._printed = 0.0
        self._first_step = 0

    # ---- ProgressBar interface ------------------------------------------------------------------
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _print(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(f"vpnext: {text}", file=self.stream or sys.stdout, flush=True)

    def _due(self, now: float, last: bool) -> bool:
        return last or now - self._printed >= self.every_s

    # ---- training -------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = self._printed = time.monotonic()
        self._first_step = trainer.global_step  # a resumed run starts counting here

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        total, done = total_steps(trainer), trainer.global_step - self._first_step
        last = total is not None and trainer.global_step >= total
        if not (done == 1 or self._due(now, last)) or done <= 0:
            return
        elapsed = now - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [position(trainer)]
        if total:
            parts[0] = parts[0].replace(" |", f" ({100 * trainer.global_step // total}%) |", 1)
        loss = self.get_metrics(trainer, pl_module).get("train/loss")
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4g}")
        parts += [f"{rate:.3g} it/s", f"elapsed {_clock(elapsed)}"]
        if total and rate > 0:
            parts.append(f"ETA {_clock((total - trainer.global_step) / rate)}")
        self._print(" | ".join(parts))
        self._printed = now

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        scores = {k: v for k, v in trainer.callback_metrics.items() if k.endswith("/mIoU")}
        shown = ", ".join(f"{k} {float(v):.4f}" for k, v in sorted(scores.items())) or "done"
        self._print(f"validation at step {trainer.global_step}: {shown}")

    # ---- evaluation and prediction runs ---------------------------------------------------------
    def _batch_line(self, stage: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if done == 1:
            self._started = self._printed = now
        last = isinstance(total, int) and done >= total
        if done != 1 and not self._due(now, last):
            return
        elapsed = now - self._started
        rate = (done - 1) / elapsed if elapsed > 0 else 0.0
        count = f"{done}/{total}" if isinstance(total, int) else str(done)
        parts = [f"{stage}: batch {count}"]
        if rate > 0:
            parts += [f"{rate:.3g} it/s", f"elapsed {_clock(elapsed)}"]
            if isinstance(total, int):
                parts.append(f"ETA {_clock((total - done) / rate)}")
        self._print(" | ".join(parts))
        self._printed = now

    def on_validation_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        if trainer.state.fn == "validate":
            self._batch_line("validate", batch_idx + 1, _int(sum(trainer.num_val_batches)))

    def on_test_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        self._batch_line("test", batch_idx + 1, _int(sum(trainer.num_test_batches)))

    def on_predict_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        self._batch_line("predict", batch_idx + 1, _int(sum(trainer.num_predict_batches)))


def _int(total: float | int | None) -> int | None:
    return None if total is None or math.isinf(total) else int(total)


def progress_bar(every_s: float = 30.0, stream: IO[str] | None = None) -> ProgressBar:
    """:class:`StepProgressBar` when ``stream`` (default stdout) is a terminal, else :class:`LineProgress`."""
    target = stream or sys.stdout
    if target.isatty():
        return StepProgressBar()
    return LineProgress(every_s, stream)
