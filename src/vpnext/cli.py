"""The ``vpnext`` command: LightningCLI subcommands plus a small registry of extra tools.

``vpnext fit|validate|test|predict`` run :class:`~vpnext.training.SegmentationModule` on
:class:`~vpnext.data.SegDataModule` (synthetic data by default) through LightningCLI, so every
constructor argument is a ``--model.*``/``--data.*``/``--trainer.*`` option or a YAML key.

Any other first word(s) listed in :data:`EXTRA_COMMANDS` run a tool's own ``main(argv)`` instead
(imported only when called, so one tool's imports or import errors never affect the others). To
add a command, add ``"name": "package.module:function"`` (the function takes the remaining
arguments as a list and returns an exit code) and document it in ``docs/training.md``.

Every run writes into its own directory (see :func:`resolve_run_dir`); errors a user can fix
(bad config keys or values, missing files) end the process with one ``vpnext: error:`` line and a
non-zero exit code. ``--debug`` or ``VPNEXT_DEBUG=1`` shows the full traceback instead.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shlex
import sys
import warnings
from argparse import ArgumentError
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from vpnext.data import SegDataModule
from vpnext.training import (
    MODEL_ARGS,
    PredictionWriter,
    ResultsWriter,
    SegmentationModule,
)
from vpnext.training.checkpointing import (
    JOB,
    PREEMPTED_EXIT_CODE,
    CheckpointWriteError,
    CorruptCheckpointError,
    JobRecorder,
    LastCheckpoint,
    NonFiniteLossError,
    NonFiniteLossGuard,
    NonFiniteWeightsError,
    Preempted,
    PreemptionCheckpoint,
    ResumedCSVLog,
    RNGStateCheckpoint,
    SafeCheckpointIO,
    UnsafeCheckpointError,
    check_backbone_weights,
    check_weights_file,
    describe_mismatch,
    load_state_dict_file,
    load_weights,
    read_csv_rows,
    safe_load,
    state_dict_mismatch,
)
from vpnext.training.pictures import ValidationPictures

#: Extra commands: space-separated command words -> ``"module:function"``; the function gets the
#: arguments after the command words and returns an exit code.
EXTRA_COMMANDS: dict[str, str] = {
    "data prepare": "vpnext.data.prepare:main",
    "flops": "vpnext.tools.flops_cmd:main",
    "benchmark": "vpnext.tools.benchmark:main",
    "sweep": "vpnext.tools.sweep:main",
    "report": "vpnext.tools.report:main",
    "export": "vpnext.tools.export:main",
    "context-maps": "vpnext.tools.context_maps:main",
}
#: ``vpnext predict --ckpt_path C INPUT...`` (files and folders in, label PNGs and overlays out).
IMAGE_PREDICT = "vpnext.inference.predict:main"

#: Environment variable through which the launching process hands its run directory to the
#: processes Lightning starts for the other DDP ranks (they re-run the same command line).
RUN_DIR_ENV = "_VPNEXT_RUN_DIR"
DEBUG_ENV = "VPNEXT_DEBUG"
#: Model arguments a checkpoint fixes (they shape the weights); ``num_classes`` and ``img_size``
#: come from the data through the links.
ARCHITECTURE_ARGS = tuple(a for a in MODEL_ARGS if a not in ("num_classes", "img_size", "pretrained"))
#: Checkpoint path keywords Lightning resolves itself (not files).
_CKPT_KEYWORDS = {"best", "last", "hpc", "registry"}


@dataclass
class RunOptions:
    """Where a run writes its outputs.

    Args:
        root: Folder holding every experiment's runs.
        name: Experiment name; default: the stem of the first ``--config`` file, else ``default``.
        dir: Exact run directory (must be new or empty, except when resuming it with
            ``--ckpt_path last``); default ``<root>/<name>/<YYYYmmdd-HHMMSS>_<subcommand>``.
        ckpt_every_n_steps: Also write ``checkpoints/last.ckpt`` every N optimiser steps, whatever
            the validation interval (``None``: only at validation and at the end).
        ckpt_every_minutes: Also write ``checkpoints/last.ckpt`` after this many minutes of
            training since the last one (``None``: off; exclusive with ``ckpt_every_n_steps``).
        pictures: Validation images shown as image / ground truth / prediction after every
            validation (``<run dir>/pictures/``, TensorBoard, W&B); 0 turns them off.
    """

    root: str = "runs"
    name: str | None = None
    dir: str | None = None
    ckpt_every_n_steps: int | None = None
    ckpt_every_minutes: float | None = None
    pictures: int = 4


@dataclass
class InitOptions:
    """Start from another run's weights (fine-tuning), without its training state.

    Args:
        weights: A vpnext checkpoint (``.ckpt``) or a state-dict file (``.pt``, ``.pth``,
            ``.safetensors``) of ``SegmentationModule`` or ``VPNeXt``; loaded before the run
            starts. Unlike ``ckpt_path`` it neither fixes the architecture nor resumes the step,
            optimiser or schedule.
        strict: Refuse a file whose keys or shapes differ from the model's (they are listed);
            ``false`` loads the tensors that match by name and shape and keeps the model's own
            values for the rest, e.g. a new dataset's classifier.
    """

    weights: str | None = None
    strict: bool = True


class UserError(Exception):
    """A problem with the command line, a config or a file that the user can fix."""


def _global_rank_from_env() -> int:
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def _launcher_version(subcommand: str) -> str | None:
    """A run version all ranks agree on when an external launcher starts every rank itself."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return f"torchrun-{run_id}_{subcommand}"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_JOB_ID']}_{subcommand}"
    return None


def experiment_name(options: RunOptions, config_files: Sequence[Any] | None) -> str:
    """The experiment name: ``run.name``, else the first config file's stem, else ``default``."""
    if options.name:
        return options.name
    for item in config_files or []:
        path = getattr(item, "absolute", None) or getattr(item, "relative", None) or item
        try:
            return Path(str(path)).stem
        except TypeError:  # config given as an inline string, not a file
            continue
    return "default"


def resolve_run_dir(options: RunOptions, name: str, subcommand: str) -> Path:
    """Pick (and on global rank 0 create) the run directory; never reuse another run's files.

    * A process started by Lightning for another DDP rank takes the directory of the process
      that launched it (inherited through the environment).
    * With ``run.dir`` that directory is used; on rank 0 it must not hold files.
    * Otherwise ``<root>/<name>/<timestamp>_<subcommand>`` (``-1``, ``-2``… appended if taken),
      or a job-id version under torchrun/SLURM multi-process jobs, where every rank computes it.

    Raises:
        UserError: An explicit ``run.dir`` that already holds files.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
    rank = _global_rank_from_env()
    if options.dir:
        run_dir = Path(options.dir)
    else:
        version = _launcher_version(subcommand)
        if version is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            return _new_dir(Path(options.root) / name, f"{stamp}_{subcommand}")
        run_dir = Path(options.root) / name / version
    if rank == 0 and run_dir.is_dir() and any(run_dir.iterdir()):
        raise UserError(
            f"run.dir: {run_dir} already holds files of another run; pass a new --run.dir "
            "(or remove the old one)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def find_last_checkpoint(options: RunOptions, name: str) -> Path:
    """The ``last.ckpt`` that ``--ckpt_path last`` resumes: ``run.dir``'s, else the experiment's latest.

    "Latest" is the run whose ``last.ckpt`` was written most recently, among
    ``<root>/<name>/*/checkpoints/last.ckpt``.

    Raises:
        UserError: Nothing to resume; the message names what was looked for.
    """
    if options.dir:
        pattern = Path(options.dir) / "checkpoints" / "last.ckpt"
        found = [pattern] if pattern.is_file() else []
    else:
        pattern = Path(options.root) / name / "*" / "checkpoints" / "last.ckpt"
        found = [p for p in (Path(options.root) / name).glob("*/checkpoints/last.ckpt") if p.is_file()]
    if not found:
        raise UserError(
            f"ckpt_path=last: no checkpoint of experiment {name!r} to resume ({pattern} does not exist); "
            "--run.name, --run.root or --run.dir select the experiment; "
            "leave out --ckpt_path to start a new run"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def resume_command(args: Sequence[str], run_dir: Path) -> str:
    """The command that continues this run: ``args`` with ``--run.dir RUN --ckpt_path last``."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("--ckpt_path", "--run.dir"):
            skip = True
            continue
        if arg.startswith(("--ckpt_path=", "--run.dir=")):
            continue
        kept.append(arg)
    return shlex.join(["vpnext", *kept, "--run.dir", str(run_dir), "--ckpt_path", "last"])


def _new_dir(parent: Path, base: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        candidate = parent / (base if attempt == 0 else f"{base}-{attempt}")
        try:
            candidate.mkdir()  # atomic: two runs started in the same second get different folders
        except FileExistsError:
            continue
        return candidate
    raise UserError(f"run.dir: could not create a new run folder under {parent}")


class RunConfigCallback(SaveConfigCallback):
    """Saves the parsed configuration as ``<run dir>/config.yaml``.

    The run directory (``trainer.default_root_dir``) is fresh for every run, so the file never
    overwrites another run's, whichever logger comes first.
    """

    def __init__(self, parser: LightningArgumentParser, config: Namespace, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(parser, config, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        path = Path(trainer.default_root_dir) / self.config_filename
        if path.exists() and not self.overwrite:
            raise UserError(f"{path} already exists; every run needs its own run.dir")
        path.parent.mkdir(parents=True, exist_ok=True)
        config = self.config
        if stage == "fit" and config.get("ckpt_path") is not None:
            # A fit's config describes the run, not where it was resumed from: evaluating it with
            # `vpnext test --config RUN/config.yaml` must not pick up that checkpoint.
            config = config.clone()
            config.ckpt_path = None
        self.parser.save(
            config, str(path), skip_none=False, overwrite=self.overwrite, multifile=self.multifile
        )


class VPNeXtCLI(LightningCLI):
    """LightningCLI for :class:`SegmentationModule` on :class:`SegDataModule`, one directory per run.

    ``data.num_classes`` and ``data.crop_size`` are linked to ``model.num_classes`` and
    ``model.img_size``; a fixed data-module class keeps dataset options flat (``--data.dataset``).

    Args:
        args: Command-line arguments (without the program name); ``None`` reads ``sys.argv``.
        epilog: Text shown at the end of ``--help``.
    """

    def __init__(self, args: list[str] | None = None, epilog: str | None = None) -> None:
        super().__init__(
            model_class=SegmentationModule,
            datamodule_class=SegDataModule,
            save_config_callback=RunConfigCallback,
            trainer_defaults={"logger": _default_loggers()},
            seed_everything_default=0,
            parser_kwargs=_parser_kwargs(epilog),
            auto_configure_optimizers=False,
            args=args,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # Before seeding and logging start, so that a wrong path is the only line printed.
        subcommand = self.config.get("subcommand")
        self.resuming = False
        if subcommand:
            config = self.config[subcommand]
            _check_inputs(config)
            config.run.name = experiment_name(config.run, config.get("config"))
            if str(config.get("ckpt_path")) == "last" and not os.environ.get(RUN_DIR_ENV):
                # Lightning's own "last" looks only in this (new) run's folder: it finds nothing
                # and would silently start over.
                config.ckpt_path = str(find_last_checkpoint(config.run, config.run.name))
                self.resuming = subcommand == "fit"
            elif str(config.get("ckpt_path")) == "last":  # a DDP rank started by Lightning
                config.ckpt_path = str(Path(os.environ[RUN_DIR_ENV]) / "checkpoints" / "last.ckpt")
                self.resuming = subcommand == "fit"
            if self.resuming:  # continue in the interrupted run's folder
                self.run_dir = Path(config.ckpt_path).parent.parent
            else:
                self.run_dir = resolve_run_dir(config.run, config.run.name, subcommand)
            os.environ[RUN_DIR_ENV] = str(self.run_dir)

    def _parse_ckpt_path(self) -> None:
        """Take the network's architecture from ``ckpt_path``, and nothing else.

        Lightning's default replaces *every* model argument with the checkpoint's, which would
        silently drop e.g. ``vpnext validate --ckpt_path X --model.eval_mode=ms_flip``. Here the
        checkpoint only fixes the arguments that shape the weights; evaluation, loss and optimiser
        arguments stay as configured. ``pretrained`` is switched off: the weights come from the
        checkpoint, so the original backbone file or a download is not needed.
        """
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        self.ckpt_num_classes = None
        self.ckpt_step = 0
        if not ckpt or not Path(str(ckpt)).is_file():
            return
        checkpoint = safe_load(str(ckpt), mmap=True)
        self.ckpt_step = int(checkpoint.get("global_step", 0))
        hparams = checkpoint.get("hyper_parameters", {})
        self.ckpt_num_classes = hparams.get("num_classes")
        architecture = {k: hparams[k] for k in ARCHITECTURE_ARGS if k in hparams}
        architecture["pretrained"] = False
        self.config = self.parser.parse_object({subcommand: {"model": architecture}}, self.config)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunOptions, "run")
        parser.add_class_arguments(InitOptions, "init")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.crop_size", "model.img_size", apply_on="instantiate")
        # The input normalisation follows the backbone's weights unless data.mean/std are given.
        parser.link_arguments("model.backbone", "data.normalize_for")

    def before_instantiate_classes(self) -> None:
        subcommand = str(self.subcommand)
        config = self.config[subcommand]
        run_dir, name = self.run_dir, config.run.name
        # The saved config names the experiment, not the folder, so rerunning it starts a new run.
        config.run.dir = None
        config.trainer.default_root_dir = str(run_dir)
        config.trainer.logger = _place_loggers(config.trainer.logger, run_dir, name)
        ckpt = config.get("ckpt_path")
        # Outside fit nothing is saved; pointing the checkpoint callbacks at the folder the
        # checkpoint came from lets Lightning restore their state without a "dirpath changed" warning.
        ckpt_dir = (
            Path(str(ckpt)).parent if subcommand != "fit" and ckpt and Path(str(ckpt)).is_file() else None
        )
        self.trainer_defaults["callbacks"] = _run_callbacks(
            run_dir, name, subcommand, ckpt_dir, config.run.ckpt_every_n_steps, config.run.ckpt_every_minutes
        )
        if subcommand in ("fit", "validate", "test") and config.run.pictures > 0:
            self.trainer_defaults["callbacks"].append(
                ValidationPictures(config.run.pictures, str(run_dir / "pictures"))
            )
        if self.resuming:
            self.save_config_kwargs["overwrite"] = True  # the run's own config.yaml, rewritten
            # Read before the CSV logger starts (it deletes the file); written back by rank 0.
            rows = read_csv_rows(run_dir / "metrics.csv")
            self.trainer_defaults["callbacks"].append(ResumedCSVLog(rows, self.ckpt_step))

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # Atomic checkpoint writes and weights_only loads, Lightning's resume included.
        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(SafeCheckpointIO())
        config["plugins"] = plugins
        return super()._instantiate_trainer(config, callbacks)

    def after_instantiate_classes(self) -> None:
        config = self.config[str(self.subcommand)]
        ckpt = config.get("ckpt_path")
        finetune = f"; to fine-tune from its weights use --init.weights {ckpt} --init.strict false instead"
        data_classes = getattr(self.datamodule, "num_classes", None)
        if self.ckpt_num_classes is not None and data_classes != self.ckpt_num_classes:
            raise UserError(
                f"ckpt_path: {ckpt} was trained for {self.ckpt_num_classes} classes, but the data "
                f"({self.datamodule.dataset_name!r}) has {data_classes}{finetune}"
            )
        if ckpt and Path(str(ckpt)).is_file():
            # Lightning's strict load would end in a multi-line traceback; name the keys instead.
            mismatch = state_dict_mismatch(self.model.state_dict(), load_state_dict_file(str(ckpt)))
            if any(mismatch):
                raise UserError(
                    f"ckpt_path: {ckpt} does not fit the model: {describe_mismatch(*mismatch)}{finetune}"
                )
        if config.init.weights:
            if ckpt:
                raise UserError(
                    "init.weights and ckpt_path: give one (init.weights starts a new run from weights)"
                )
            try:
                summary = load_weights(self.model, config.init.weights, strict=config.init.strict)
            except ValueError as err:
                hint = "--init.strict false loads the matching tensors only"
                raise UserError(f"init.weights: {err}; {hint}") from None
            if all(os.environ.get(key, "0") == "0" for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK")):
                print(f"vpnext: init.weights: {summary}", file=sys.stderr, flush=True)


def _parser_kwargs(epilog: str | None) -> dict[str, Any]:
    # exit_on_error=False: parse errors raise, and main() prints them as one line without the
    # hundred-line usage block.
    common = {"exit_on_error": False}
    kwargs: dict[str, Any] = {"prog": "vpnext", **common}
    if epilog:
        kwargs["epilog"] = epilog
    for subcommand in LightningCLI.subcommands():
        kwargs[subcommand] = dict(common)
    return kwargs


def _default_loggers() -> list[dict[str, Any]]:
    """CSV always; TensorBoard when installed. Their folders are set per run."""
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "."}}]
    if any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX")):
        loggers.append(
            {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "."}}
        )
    return loggers


def _check_inputs(config: Namespace) -> None:
    """Fail before any folder is created for files that must exist."""
    ckpt = config.get("ckpt_path")
    if ckpt and str(ckpt) not in _CKPT_KEYWORDS and not Path(str(ckpt)).is_file():
        raise UserError(f"ckpt_path: checkpoint file not found: {ckpt}")
    # Files from others are opened weights_only (no code runs) before anything else happens.
    if ckpt and Path(str(ckpt)).is_file():
        check_weights_file(str(ckpt))
    pretrained = config.model.get("pretrained")
    if isinstance(pretrained, str) and pretrained.lower() not in ("true", "false"):
        if not Path(pretrained).expanduser().is_file():
            raise UserError(f"model.pretrained: backbone weights file not found: {pretrained}")
        check_weights_file(Path(pretrained).expanduser())
        try:
            check_backbone_weights(config.model.backbone, Path(pretrained).expanduser())
        except ValueError as err:
            raise UserError(f"model.pretrained: {err}") from None
    init = config.get("init")
    if init is not None and init.weights:
        if not Path(init.weights).is_file():
            raise UserError(f"init.weights: weights file not found: {init.weights}")
        check_weights_file(init.weights)
    data = config.data
    from vpnext.data.datasets import DATASET_CLASSES  # the registry, without building anything

    if data.dataset not in DATASET_CLASSES:
        known = ", ".join(sorted(DATASET_CLASSES))
        raise UserError(f"data.dataset: unknown dataset {data.dataset!r}; known: {known}")
    if data.dataset != "synthetic" and data.root and not Path(data.root).is_dir():
        raise UserError(f"data.root: dataset root of {data.dataset!r} not found: {data.root}")
    if data.get("predict_dir") and not Path(data.predict_dir).is_dir():
        raise UserError(f"data.predict_dir: folder of images to predict not found: {data.predict_dir}")
    for key, low, inclusive in _RANGES:
        section, _, name = key.partition(".")
        value = config[section].get(name) if section in config else None
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric and (value < low or (value == low and not inclusive)):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise UserError(f"{key}: must be {bound}, got {value}")


#: Numeric options with a lower bound the classes themselves would only report deep inside torch:
#: (key, bound, bound allowed).
_RANGES = (
    ("data.batch_size", 1, True),
    ("data.val_batch_size", 1, True),
    ("data.num_workers", 0, True),
    ("model.lr", 0.0, False),
    ("model.weight_decay", 0.0, True),
    ("model.warmup_iters", 0, True),
    ("trainer.max_epochs", -1, True),
)


def _check_config_files(args: Sequence[str]) -> None:
    """Name the file when a ``--config`` file is not valid YAML (the parser's message does not)."""
    import yaml

    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            path = Path(args[i + 1])
        elif arg.startswith("--config="):
            path = Path(arg.split("=", 1)[1])
        else:
            continue
        if not path.is_file():
            continue  # the parser reports missing files itself
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise UserError(f"--config {path}: not valid YAML: {problem}{where}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"--config {path}: cannot read the file ({err})") from None


def _place_loggers(loggers: Any, run_dir: Path, name: str) -> Any:
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


def _run_callbacks(
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


def _load(target: str) -> Callable[[list[str]], int | None]:
    module_name, _, function = target.partition(":")
    return getattr(importlib.import_module(module_name), function)


def _match_extra(args: list[str]) -> tuple[str, list[str]] | None:
    """The extra command named by the first words of ``args`` and the arguments after it."""
    for command in sorted(EXTRA_COMMANDS, key=lambda c: -len(c.split())):
        words = command.split()
        if args[: len(words)] == words:
            return command, args[len(words) :]
    if args:
        related = [c for c in EXTRA_COMMANDS if c.split()[0] == args[0]]
        if related:
            available = ", ".join(sorted(related))
            raise UserError(f"unknown command {' '.join(args[:2])!r}; available: {available}")
    return None


def _is_image_predict(args: list[str]) -> bool:
    """``vpnext predict --ckpt_path C INPUT...``: images in, label PNGs and overlays out.

    With ``--config`` or any ``--model.``/``--data.``/``--trainer.``/``--run.`` option it is
    Lightning's predict loop over the configured data (``predict_dir`` or the val split).
    """
    lightning = ("--config", "--model.", "--data.", "--trainer.", "--run.", "--seed_everything")
    return args[:1] == ["predict"] and not any(a.startswith((*lightning, "--print_config")) for a in args[1:])


def _extra_commands_epilog() -> str:
    names = ", ".join(f"'vpnext {name}'" for name in sorted(EXTRA_COMMANDS))
    return f"Other commands: {names} (each takes --help)."


def _describe(err: BaseException) -> str:
    """One line for an exception; types a user cannot act on keep their class name."""
    from vpnext.data.errors import DatasetError
    from vpnext.models.backbone import PretrainedWeightsError

    message = " ".join(str(err).split()) or type(err).__name__
    one_line = (UserError, DatasetError, PretrainedWeightsError, FileNotFoundError)
    checkpoints = (
        UnsafeCheckpointError,
        CorruptCheckpointError,
        CheckpointWriteError,
        NonFiniteLossError,
        NonFiniteWeightsError,
    )
    if isinstance(err, (*one_line, *checkpoints)):
        return message
    return f"{type(err).__name__}: {message}"


#: What torch.distributed reports in a process whose peer died (gloo, NCCL, the c10d store).
_PEER_FAILURE_MARKS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "remote worker crashing",
    "Broken pipe",
    "NCCL communicator was aborted",
    "failed to recv",
    "Socket Timeout",
)


def _is_peer_failure(err: BaseException) -> bool:
    text = str(err)
    return type(err).__name__ == "DistBackendError" or any(mark in text for mark in _PEER_FAILURE_MARKS)


def _rank_label() -> str:
    """``[rank N] `` in a multi-process job (torchrun, SLURM or Lightning's launcher), else empty."""
    if JOB["world_size"] > 1:
        return f"[rank {JOB['rank']}] "
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")) or 1)
    if world <= 1:
        return ""
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", os.environ.get("LOCAL_RANK", "0")))
    return f"[rank {rank}] "


def _remove_if_empty(run_dir: str | None, inherited: str | None) -> None:
    """Drop a run directory this process created if the run failed before writing anything."""
    if run_dir and run_dir != inherited:
        with contextlib.suppress(OSError):  # rmdir only succeeds on an empty folder
            Path(run_dir).rmdir()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vpnext`` console script.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        Process exit code.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    saved_debug = os.environ.get(DEBUG_ENV)
    if "--debug" in args:
        args = [a for a in args if a != "--debug"]
        os.environ[DEBUG_ENV] = "1"  # DDP rank processes re-run the command line without the flag
    if argv is None:
        # Lightning's DDP launcher re-runs sys.argv for the other ranks; keep it the parsed command.
        sys.argv = [sys.argv[0], *args]
    saved_env = os.environ.get(RUN_DIR_ENV)
    JOB.update(rank=0, world_size=1)
    try:
        extra = _match_extra(args)
        if extra is None and _is_image_predict(args):
            return int(_load(IMAGE_PREDICT)(args[1:]) or 0)
        if extra is None:
            _check_config_files(args)
        if extra is not None:
            return int(_load(EXTRA_COMMANDS[extra[0]])(extra[1]) or 0)
        with warnings.catch_warnings():
            # main(argv) is the explicit in-process API; Lightning warns whenever sys.argv also
            # holds arguments (e.g. pytest's), which is expected there.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            # The data module resumes mid-epoch itself (vpnext.data.resume), not through the loader.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
            VPNeXtCLI(None if argv is None else args, epilog=_extra_commands_epilog())
        return 0
    except ArgumentError as err:
        known = args[:1] if args and args[0] in LightningCLI.subcommands() else []
        hint = " ".join(["vpnext", *known, "--help"])
        print(f"vpnext: error: {' '.join(str(err).split())} (see {hint})", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # argument parsers report their own errors, then exit
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except Preempted as stop:
        if _global_rank_from_env() == 0:
            run_dir = stop.checkpoint.parent.parent
            print(
                f"vpnext: stopped by {stop.signal_name} at step {stop.step}; "
                f"checkpoint saved: {stop.checkpoint}\n"
                f"vpnext: resume with: {resume_command(args, run_dir)}",
                file=sys.stderr,
                flush=True,
            )
        return PREEMPTED_EXIT_CODE
    except KeyboardInterrupt:
        print("vpnext: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        rank = _rank_label()
        if rank and _is_peer_failure(err):
            # The collective this process waited in broke because another process died; that
            # process prints the error that matters, once.
            note = "stopped: another process of this job failed (its error is above)"
            print(f"vpnext: {rank}{note}", file=sys.stderr)
            return 1
        print(f"vpnext: error: {rank}{_describe(err)} (VPNEXT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    finally:
        _remove_if_empty(os.environ.get(RUN_DIR_ENV), saved_env)
        # In-process callers (tests, notebooks) must not inherit this run's directory.
        if saved_env is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = saved_env
        # Nor its --debug (set in the environment for the DDP ranks' processes).
        if saved_debug is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = saved_debug


if __name__ == "__main__":
    raise SystemExit(main())
