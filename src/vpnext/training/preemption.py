"""Stopping a fit on a pre-emption signal with a resumable checkpoint.

:class:`PreemptionCheckpoint` turns SIGTERM (``scancel``, Kubernetes), SIGUSR1 (SLURM's warning
before the time limit, ``#SBATCH --signal=USR1@120``) and a first Ctrl-C into "finish the current
step (or validation), write ``last.ckpt``, stop" and raises :class:`Preempted`, which the CLI
reports with the command that resumes the run and exit code
:data:`vpnext.schema.PREEMPTED_EXIT_CODE`.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from vpnext.schema import PREEMPTION_SIGNALS
from vpnext.training.checkpoints import LastCheckpoint

__all__ = ["Preempted", "PreemptionCheckpoint"]


class Preempted(Exception):
    """A fit stopped by a signal after writing a resumable checkpoint.

    Args:
        signal_name: ``SIGTERM``, ``SIGUSR1`` or ``SIGINT`` (on another rank: as that rank saw it).
        step: Global step the checkpoint holds.
        checkpoint: Path of the checkpoint written.
    """

    def __init__(self, signal_name: str, step: int, checkpoint: Path) -> None:
        super().__init__(f"{signal_name} at step {step}; checkpoint saved: {checkpoint}")
        self.signal_name = signal_name
        self.step = step
        self.checkpoint = checkpoint


class PreemptionCheckpoint(Callback):
    """Stop a fit cleanly on SIGTERM, SIGUSR1 or Ctrl-C, with ``last.ckpt`` written first.

    The handler only records the signal. At the end of the current training step, or at the end
    of a validation that was running, every rank learns of it (one all-reduce per step under DDP,
    so a signal delivered to one rank stops all of them at the same step), ``last.ckpt`` is
    written, and :class:`Preempted` is raised at the next hook (once the step's metrics are
    logged; before ``on_train_end``, so no ``results.json`` is written). A second Ctrl-C
    interrupts at once, without a checkpoint. The handlers replace Lightning's SIGTERM handler
    (which would stop without a checkpoint) during the fit and are restored afterwards.

    Args:
        last: The run's :class:`LastCheckpoint`, whose file is written.
    """

    def __init__(self, last: LastCheckpoint) -> None:
        self.last = last
        self.received: str | None = None
        self._stop: Preempted | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received is not None and name == "SIGINT":
            raise KeyboardInterrupt
        if self.received is None:
            print(
                f"vpnext: received {name}; writing a checkpoint after the current step "
                "(Ctrl-C again to stop without one)",
                file=sys.stderr,
                flush=True,
            )
        self.received = self.received or name

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received, self._stop = None, None
        if sys.platform == "win32" or not _in_main_thread():
            return
        for name in PREEMPTION_SIGNALS:
            signum = getattr(signal, name)
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) != self._handle:
                continue  # Lightning already put back what it had replaced: leave that in place
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _save_if_signalled(self, trainer: L.Trainer) -> None:
        flag = self.received is not None
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            tensor = torch.tensor([int(flag)], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
            flag = bool(tensor.item())
        if flag and self._stop is None:
            path = self.last.save_now(trainer)
            self._stop = Preempted(self.received or "a signal on another rank", trainer.global_step, path)

    def _raise_if_stopping(self) -> None:
        if self._stop is not None:
            raise self._stop

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The checkpoint is written here, where Lightning's own interval checkpoints are, but the
        # run stops at the next hook: by then the step's metrics have reached the loggers.
        self._save_if_signalled(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._save_if_signalled(trainer)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._raise_if_stopping()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_if_stopping()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_if_stopping()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_if_stopping()  # before results.json: a stopped run is not a result

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
