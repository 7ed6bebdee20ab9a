"""What every ``vpnext fit|validate|test|predict`` run is given: parser options, loggers placed in
the run directory, and the callbacks (checkpoints, results, pre-emption, NaN guard, predictions)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint

from vpnext.errors import UserError
from vpnext.training import PredictionWriter, ResultsWriter
from vpnext.training.checkpoints import LastCheckpoint
from vpnext.training.job import JobRecorder
from vpnext.training.nan_guard import NonFiniteLossGuard
from vpnext.training.preemption import PreemptionCheckpoint
from vpnext.training.rng_state import RNGStateCheckpoint

__all__ = ["default_loggers", "parser_kwargs", "place_loggers", "run_callbacks"]


def parser_kwargs(epilog: str | None, subcommands: Iterable[str]) -> dict[str, Any]:
    # exit_on_error=False: parse errors raise, and main() prints them as one line without the
    # hundred-line usage block. allow_abbrev=False: `--model.hic=2` is an error, not hiclr_depth.
    common = {"exit_on_error": False, "allow_abbrev": False}
    kwargs: dict[str, Any] = {"prog": "vpnext", **common}
    if epilog:
        kwargs["epilog"] = epilog
    for subcommand in subcommands:
        kwargs[subcommand] = dict(common)
    return kwargs


def default_loggers() -> list[dict[str, Any]]:
    """CSV always; TensorBoard when installed. Their folders are set per run."""
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "."}}]
    if any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX")):
        loggers.append(
            {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "."}}
        )
    return loggers


def place_loggers(loggers: Any, run_dir: Path, name: str) -> Any:
    """Point every configured logger into ``run_dir`` (CSV at its top, TensorBoard in a subfolder)."""
    if loggers is False or loggers is None:
        return loggers
    if loggers is True:
        loggers = [Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace())]
    items = loggers if isinstance(loggers, list) else [loggers]
    for item in items:
        if not isinstance(item, Namespace) or "class_path" not in item:
            continue
        init = item.get("init_args") or Namespace()
        kind = item.class_path.rsplit(".", 1)[-1]
        if kind == "CSVLogger":
            init.save_dir, init.name, init.version = str(run_dir), "", ""
        elif kind == "TensorBoardLogger":
            init.save_dir, init.name, init.version = str(run_dir), "tensorboard", ""
        elif kind == "WandbLogger":
            init.save_dir = str(run_dir)
            init.name = init.get("name") or f"{name}/{run_dir.name}"
        elif "save_dir" in init:
            init.save_dir = str(run_dir)
        item.init_args = init
    # CSV first: it warns (and deletes metrics.csv) if another logger has already written into the
    # run directory when it starts.
    return sorted(items, key=lambda item: getattr(item, "class_path", "").rsplit(".", 1)[-1] != "CSVLogger")


def run_callbacks(
    run_dir: Path,
    name: str,
    subcommand: str,
    ckpt_dir: Path | None = None,
    every_n_steps: int | None = None,
    every_minutes: float | None = None,
) -> list[Callback]:
    """Callbacks every run has: checkpoints (best by val/mIoU, latest), lr log, results, predictions.

    Args:
        run_dir: The run directory.
        name: Experiment name.
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        ckpt_dir: Checkpoint folder to use instead of ``<run_dir>/checkpoints``.
        every_n_steps: Extra ``last.ckpt`` interval in steps (``run.ckpt_every_n_steps``).
        every_minutes: Extra ``last.ckpt`` interval in minutes (``run.ckpt_every_minutes``).

    Raises:
        UserError: Both intervals, or a non-positive one.
    """
    if every_n_steps is not None and every_n_steps <= 0:
        raise UserError(f"run.ckpt_every_n_steps must be a positive number of steps, got {every_n_steps}")
    if every_minutes is not None and every_minutes <= 0:
        raise UserError(f"run.ckpt_every_minutes must be positive, got {every_minutes}")
    if every_n_steps is not None and every_minutes is not None:
        raise UserError("run.ckpt_every_n_steps and run.ckpt_every_minutes: set one of them, not both")
    ckpt_dir = ckpt_dir or run_dir / "checkpoints"
    last = LastCheckpoint(
        str(ckpt_dir),
        every_n_train_steps=every_n_steps,
        train_time_interval=None if every_minutes is None else timedelta(minutes=every_minutes),
    )
    callbacks: list[Callback] = [
        JobRecorder(),
        ResultsWriter(dirpath=str(run_dir), config_path=str(run_dir / "config.yaml"), experiment=name),
    ]
    # Every subcommand gets the checkpoint callback: validating a fit checkpoint without it makes
    # Lightning warn that the callbacks that wrote the checkpoint are missing.
    callbacks += [
        ModelCheckpoint(
            dirpath=str(ckpt_dir),
            filename="best",
            monitor="val/mIoU",
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
        ),
        last,
    ]
    if subcommand == "fit":
        callbacks += [
            LearningRateMonitor(logging_interval="step"),
            PreemptionCheckpoint(last),
            RNGStateCheckpoint(),
            NonFiniteLossGuard(),
        ]
    if subcommand == "predict":
        callbacks.append(PredictionWriter(str(run_dir / "predictions")))
    return callbacks
