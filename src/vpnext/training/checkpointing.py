"""Checkpoints that survive pre-emption, kills in the middle of a write and files from strangers.

* :class:`SafeCheckpointIO` is the Trainer's checkpoint plugin: it writes every checkpoint to a
  temporary file in the target folder, flushes it to disk and renames it over the old one, so a
  kill at any moment leaves either the previous complete file or the new complete file. It loads
  with ``torch.load(weights_only=True)`` (Lightning's own resume path goes through it).
* :func:`safe_load` is the one way vpnext reads a checkpoint or weights file: tensors and plain
  containers only. A file that carries any other pickled object is refused with one line
  (:class:`UnsafeCheckpointError`) and nothing in it runs; an unreadable file raises
  :class:`CorruptCheckpointError`.
* :class:`LastCheckpoint` keeps ``<dirpath>/last.ckpt``: at every validation, at the end, and on
  an optional step or time interval independent of validation.
* :class:`PreemptionCheckpoint` turns SIGTERM (``scancel``, Kubernetes), SIGUSR1 (SLURM's warning
  before the time limit, ``#SBATCH --signal=USR1@120``) and a first Ctrl-C into "finish the
  current step (or validation), write ``last.ckpt``, stop" and raises :class:`Preempted`, which the
  CLI reports with the command that resumes the run and exit code :data:`PREEMPTED_EXIT_CODE`.
* :class:`NonFiniteLossGuard` stops a fit at the first step whose loss (any term) is NaN or
  infinite, before the update; :class:`SafeCheckpointIO` also refuses to write non-finite weights,
  so the last checkpoint on disk is always a finite one.
* :class:`RNGStateCheckpoint` stores the global torch/numpy/python random states in the
  checkpoint and restores them at the first step after a resume (dropout draws from them).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import math
import os
import pickle
import random
import re
import signal
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from vpnext.errors import OneLineError
from vpnext.run_dir import JOB
from vpnext.schema import PREEMPTED_EXIT_CODE, PREEMPTION_SIGNALS
from vpnext.training import results

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "LastCheckpoint",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "NonFiniteWeightsError",
    "Preempted",
    "PreemptionCheckpoint",
    "RNGStateCheckpoint",
    "ResumedCSVLog",
    "SafeCheckpointIO",
    "UnsafeCheckpointError",
    "safe_load",
]


class UnsafeCheckpointError(OneLineError):
    """A checkpoint or weights file holds pickled objects other than tensors and plain containers."""


class CheckpointWriteError(OneLineError):
    """A checkpoint could not be written (folder not writable, disk full); the old one is intact."""


class CorruptCheckpointError(OneLineError):
    """A checkpoint or weights file that cannot be read (truncated, empty, not a checkpoint).

    Args:
        message: The whole message (it names the file).
        reason: Why the file could not be read, without the file name (default: ``message``).
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or str(self)


def safe_load(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors.

    Raises:
        FileNotFoundError: No such file.
        UnsafeCheckpointError: The file carries a pickled payload (a class, a function call); it
            was refused before anything in it ran.
        CorruptCheckpointError: The file is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found is None:
            reason = _last_line(err)
            raise CorruptCheckpointError(f"{path}: not a readable checkpoint ({reason})", reason) from None
        raise UnsafeCheckpointError(
            f"{path}: refused: the file carries a pickled Python object ({found.group(1)}), not only "
            "tensors; vpnext loads weights_only and ran nothing from it"
        ) from None
    except Exception as err:  # torch's readers fail in many ways on foreign bytes (KeyError, ...)
        reason = _last_line(err)
        if not isinstance(err, (RuntimeError, OSError, ValueError, EOFError)):
            reason = f"{type(err).__name__}: {reason}"  # e.g. "KeyError: 101" rather than "101"
        raise CorruptCheckpointError(f"{path}: not a readable checkpoint ({reason})", reason) from None


def _last_line(err: BaseException) -> str:
    parts = [p.strip() for p in str(err).split("\n\n") if p.strip() and "documentation" not in p]
    text = parts[-1] if parts else type(err).__name__
    # torch's zip reader appends a paragraph of advice to the reason; keep the reason.
    text, advice, _ = text.partition(" This is an internal miniz error")
    text = text.rstrip(".") if advice else text
    return " ".join(text.split())[:200]


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


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, fsync, then rename over ``path``.

    Raises:
        OSError: The folder is not writable or the disk is full; ``path`` is left as it was.
    """
    # Serialised in memory first (as Lightning's own writer does): torch's zip writer reports a
    # failing file write (disk full) as an opaque RuntimeError, Python's write as the OSError it is.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class LastCheckpoint(results.LastCheckpoint):
    """``<dirpath>/last.ckpt``: the latest weights and training state, one file overwritten in place.

    Written at every validation, at the end of training, and, when set, every
    ``every_n_train_steps`` optimiser steps or every ``train_time_interval`` of training
    (independent of validation). Extends :class:`vpnext.training.results.LastCheckpoint` (which
    ``results.json`` recognises) with the intervals and :meth:`save_now`.

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
        ModelCheckpoint.__init__(  # the parent's signature has no intervals
            self,
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
        ModelCheckpoint.on_train_end(self, trainer, pl_module)
        # Steps after the last validation (max_steps not a multiple of the interval) still count.
        if self._last_global_step_saved != trainer.global_step:
            self.save_now(trainer)


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
                *map(_plain, np_state[2:]),
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


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class ResumedCSVLog(Callback):
    """Keeps ``metrics.csv`` of a resumed run whole: the rows before the checkpoint, then the new ones.

    Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts. The CLI reads the
    file before that (:func:`read_csv_rows`); this callback writes the rows logged before the
    checkpoint's step back once the logger has started, and the logger appends to them.

    Args:
        rows: ``(header, rows)`` of the old ``metrics.csv``.
        step: Global step of the checkpoint; rows logged at or after it are dropped (the resumed
            run logs those steps again).
    """

    def __init__(self, rows: tuple[list[str], list[dict[str, str]]], step: int) -> None:
        self.header, self.rows = rows
        self.step = step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.loggers import CSVLogger

        if not trainer.is_global_zero or not self.header:
            return
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                writer = logger.experiment  # starting it removes the old file
                kept = [row for row in self.rows if _step_of(row) < self.step]
                with open(writer.metrics_file_path, "w", newline="") as handle:
                    out = csv.DictWriter(handle, fieldnames=self.header)
                    out.writeheader()
                    out.writerows(kept)
                writer.metrics_keys = list(self.header)
                return


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file (empty if it does not exist)."""
    if not path.is_file():
        return [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _step_of(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "inf")
    except ValueError:
        return float("inf")


# ---- weights from other runs ---------------------------------------------------------------------
def check_weights_file(path: str | Path) -> Any:
    """Open a weights file the way it will be loaded and refuse it if it is unsafe or unreadable.

    ``.safetensors`` files are read with safetensors (which holds no code); everything else
    through :func:`safe_load`.

    Returns:
        What :func:`safe_load` read (memory-mapped where the format allows); ``None`` for
        ``.safetensors`` and ``.npz`` files.

    Raises:
        UnsafeCheckpointError: A pickled payload.
        CorruptCheckpointError: Not readable.
    """
    path = Path(path)
    if path.suffix == ".npz":  # numpy archives (timm's JAX weights) are read with allow_pickle=False
        return None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                list(handle.keys())
        except Exception as err:  # safetensors raises its own error types
            raise CorruptCheckpointError(
                f"{path}: not a readable safetensors file ({_last_line(err)})"
            ) from None
        return None
    try:
        return safe_load(path, mmap=True)
    except CorruptCheckpointError:
        return safe_load(path)  # files in torch's legacy (non-zip) format cannot be memory-mapped


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a Lightning checkpoint (its ``state_dict``) or of a plain state-dict file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        check_weights_file(path)
        from safetensors.torch import load_file

        return load_file(str(path))
    loaded = safe_load(path)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{path}: holds no state dict (a mapping of parameter names to tensors)")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def state_dict_mismatch(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """Keys ``given`` lacks, keys it has in excess, and ``(key, given shape, expected shape)``."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        (k, tuple(given[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    return missing, unexpected, shapes


def describe_mismatch(
    missing: list[str],
    unexpected: list[str],
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    limit: int = 6,
) -> str:
    """One line naming the mismatched keys and shapes (the first ``limit`` of each kind)."""

    def listed(items: list[str]) -> str:
        more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    parts = []
    if shapes:
        parts.append(
            f"{len(shapes)} with other shapes (file vs model): "
            + listed([f"{k} {list(a)} vs {list(b)}" for k, a, b in shapes])
        )
    if missing:
        parts.append(f"{len(missing)} missing from the file: {listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model: {listed(unexpected)}")
    return "; ".join(parts)


def _align_prefix(expected: dict[str, Any], given: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a bare ``VPNeXt`` state dict for a ``SegmentationModule`` (keys under ``model.``)."""
    if any(k in expected for k in given):
        return given
    prefixed = {f"model.{k}": v for k, v in given.items()}
    return prefixed if any(k in expected for k in prefixed) else given


def load_weights(module: torch.nn.Module, path: str | Path, strict: bool = True) -> str:
    """Initialise ``module`` from a weights file (fine-tuning), no training state.

    Args:
        module: The model (a ``SegmentationModule`` or a ``VPNeXt``).
        path: A vpnext checkpoint or a state-dict file (``.pt``/``.pth``/``.safetensors``).
        strict: Refuse any key or shape difference; with ``False`` load the tensors whose name and
            shape match and keep the module's own values for the others.

    Returns:
        A one-line summary of what was loaded.

    Raises:
        ValueError: ``strict`` and the file does not fit (the message lists the differences).
    """
    expected = module.state_dict()
    given = _align_prefix(expected, load_state_dict_file(path))
    missing, unexpected, shapes = state_dict_mismatch(expected, given)
    if strict and (missing or unexpected or shapes):
        raise ValueError(f"{path} does not fit the model: {describe_mismatch(missing, unexpected, shapes)}")
    bad = {k for k, _, _ in shapes}
    usable = {k: v for k, v in given.items() if k in expected and k not in bad}
    if not usable:
        raise ValueError(f"{path}: no tensor matches the model by name and shape; wrong file?")
    module.load_state_dict(usable, strict=False)
    summary = f"loaded {len(usable)} of {len(expected)} tensors from {path}"
    if missing or unexpected or shapes:
        summary += (
            f"; kept the model's own values for the rest ({describe_mismatch(missing, unexpected, shapes)})"
        )
    return summary


# ---- non-finite losses and weights ---------------------------------------------------------------
class NonFiniteLossError(OneLineError):
    """A loss term became NaN or infinite; the run stopped before the update."""


class NonFiniteWeightsError(OneLineError):
    """A checkpoint about to be written holds NaN or infinite weights; it was not written."""


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


def first_non_finite(state_dict: dict[str, Any]) -> str | None:
    """Name of the first floating tensor in ``state_dict`` holding NaN or inf, else ``None``."""
    for name, value in state_dict.items():
        if (
            isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and not bool(torch.isfinite(value).all())
        ):
            return name
    return None


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors of a weights file (memory-mapped; nothing runs)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    try:
        loaded = safe_load(path, mmap=True)
    except CorruptCheckpointError:
        loaded = safe_load(path)
    if isinstance(loaded, dict):
        for key in ("state_dict", "model", "state_dict_ema"):  # the containers timm unwraps too
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict):
        return {}
    return {k: tuple(v.shape) for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def check_backbone_weights(backbone: str, path: str | Path) -> None:
    """Refuse a ``model.pretrained`` file that does not hold weights of ``backbone``.

    timm loads such a file without complaint when few keys match, and the run would train from a
    random backbone. Checked: at least half of the backbone's tensors are present (after the
    ``module.``/``model.``/``backbone.`` prefixes timm also strips) and every present tensor has
    the backbone's shape (the position embedding excepted: it is resampled).

    Raises:
        ValueError: The file does not fit; the message lists what differs.
    """
    import timm

    path = Path(path)
    if path.suffix == ".npz":  # original JAX checkpoints: timm's own loader maps their names
        return
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False, num_classes=0)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = _tensor_shapes(path)
    for prefix in ("module.", "model.", "backbone.", "vit."):
        if given and all(k.startswith(prefix) for k in given):
            given = {k[len(prefix) :]: v for k, v in given.items()}
    found = [k for k in expected if k in given]
    if len(found) < len(expected) / 2:
        sample = ", ".join(list(given)[:4]) or "no tensors"
        raise ValueError(
            f"{path} does not hold {backbone} weights: {len(found)} of its {len(expected)} tensors "
            f"found (the file has e.g. {sample})"
        )
    shapes = [(k, given[k], expected[k]) for k in found if given[k] != expected[k] and k != "pos_embed"]
    if shapes:
        raise ValueError(f"{path} does not fit {backbone}: {describe_mismatch([], [], shapes)}")


class JobRecorder(Callback):
    """Records the global rank and world size in :data:`JOB` once Lightning knows them."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        JOB.update(rank=int(trainer.global_rank), world_size=int(trainer.world_size))
