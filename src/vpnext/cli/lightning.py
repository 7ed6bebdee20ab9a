"""``vpnext fit|validate|test|predict``: LightningCLI for the segmentation module, one directory per run.

Imported by :func:`vpnext.cli.main.main` only for these four commands, so that ``vpnext --help``,
``--version`` and the other tools start without Lightning. Every constructor argument of
:class:`~vpnext.training.SegmentationModule`, :class:`~vpnext.data.SegDataModule` and the
Trainer is a ``--model.*``/``--data.*``/``--trainer.*`` option or a YAML key; flags are matched
exactly (no prefixes) and an unknown one gets "did you mean" suggestions.
"""

from __future__ import annotations

import os
import sys
import warnings
from argparse import ArgumentError
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from jsonargparse import Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from vpnext.checkpoint_io import describe_mismatch, load_state_dict_file, load_weights, state_dict_mismatch
from vpnext.cli.assembly import default_loggers, parser_kwargs, place_loggers, run_callbacks
from vpnext.cli.checks import (
    check_inputs,
    fold_root_dir,
    model_flags,
    read_checkpoint,
    suggest_flag,
    tuples_as_lists,
    wants_progress_bar,
)
from vpnext.data import SegDataModule
from vpnext.run_dir import (
    JOB,
    RUN_DIR_ENV,
    InitOptions,
    RunOptions,
    UserError,
    evaluate_command,
    experiment_name,
    find_last_checkpoint,
    global_rank_from_env,
    is_launching_process,
    resolve_run_dir,
    resume_command,
)
from vpnext.schema import PREEMPTED_EXIT_CODE
from vpnext.training import (
    MODEL_ARGS,
    SegmentationModule,
)
from vpnext.training.checkpoints import SafeCheckpointIO
from vpnext.training.csv_log import ResumedCSVLog, read_csv_rows
from vpnext.training.preemption import Preempted
from vpnext.training.progress import progress_bar
from vpnext.training.val_pictures import ValidationPictures

__all__ = ["VPNeXtCLI", "run"]

#: Model arguments a checkpoint fixes (they shape the weights); ``num_classes`` and ``img_size``
#: come from the data through the links.
ARCHITECTURE_ARGS = tuple(a for a in MODEL_ARGS if a not in ("num_classes", "img_size", "pretrained"))


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
        config = self.config.clone()
        if stage == "fit":
            # A fit's config describes the run, not where it was resumed from: evaluating it with
            # `vpnext test --config RUN/config.yaml` must not pick up that checkpoint.
            config.ckpt_path = None
        # The run directory is the Trainer's root here; the saved config keeps run.root instead,
        # so that `--config RUN/config.yaml` starts a new run next to this one, not inside it.
        config.trainer.default_root_dir = None
        self.parser.save(
            config, str(path), skip_none=False, overwrite=self.overwrite, multifile=self.multifile
        )


class AnnounceStart(Callback):
    """Calls ``announce("start")`` once the data is set up (Lightning's ``setup`` hook).

    A run that stops at a bad input before that ends with its error line alone.
    """

    def __init__(self, announce: Callable[[Literal["start", "end"]], None]) -> None:
        self.announce = announce

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.announce("start")


class VPNeXtCLI(LightningCLI):
    """LightningCLI for :class:`SegmentationModule` on :class:`SegDataModule`, one directory per run.

    ``data.num_classes`` and ``data.crop_size`` are linked to ``model.num_classes`` and
    ``model.img_size``; a fixed data-module class keeps dataset options flat (``--data.dataset``).

    Only the parser of the subcommand on the command line is built (building all four takes about
    a second); with none (``vpnext --config X fit``) all are.

    Args:
        args: Command-line arguments (without the program name); ``None`` reads ``sys.argv``.
        epilog: Text shown at the end of ``--help``.
    """

    def __init__(self, args: list[str] | None = None, epilog: str | None = None) -> None:
        words = sys.argv[1:] if args is None else args
        self.only = words[0] if words and words[0] in LightningCLI.subcommands() else None
        super().__init__(
            model_class=SegmentationModule,
            datamodule_class=SegDataModule,
            save_config_callback=RunConfigCallback,
            trainer_defaults={"logger": default_loggers()},
            seed_everything_default=0,
            parser_kwargs=parser_kwargs(epilog, self.subcommands()),
            auto_configure_optimizers=False,
            args=args,
        )

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        """Lightning's subcommands (and the Trainer arguments they skip), only ``self.only`` if set."""
        every = LightningCLI.subcommands()
        return {self.only: every[self.only]} if self.only else every

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        #: The command line as given (for the messages that name flags).
        self.words = list(sys.argv[1:] if args is None else args)
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            raise ArgumentError(None, self._with_suggestions(str(err))) from None
        # Before seeding and logging start, so that a wrong path is the only line printed.
        subcommand = self.config.get("subcommand")
        self.resuming = False
        #: The validation-pictures callback of this run (named in the end-of-fit lines), if any.
        self.pictures: ValidationPictures | None = None
        if subcommand:
            config = self.config[subcommand]
            check_inputs(config)
            fold_root_dir(config)
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

    def _with_suggestions(self, message: str) -> str:
        """An "unrecognized arguments" message with the subcommand's closest options."""
        words = self.words
        sub = self._subcommand_parsers.get(words[0]) if words else None
        head, found, unknown = message.partition("unrecognized arguments: ")
        if sub is None or not found:
            return message
        options = [o for o in sub._option_string_actions if o.startswith("--")]
        flags = [word.split("=", 1)[0] for word in unknown.split() if word.startswith("--")]
        hints = [f"{flag}{suggest_flag(flag, options)}" for flag in flags]
        return f"{head}unrecognized arguments: {' '.join(hints) or unknown}"

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
        checkpoint = read_checkpoint(Path(str(ckpt)))
        self.ckpt_step = int(checkpoint.get("global_step", 0))
        hparams = checkpoint.get("hyper_parameters", {})
        self.ckpt_num_classes = hparams.get("num_classes")
        architecture = {k: hparams[k] for k in ARCHITECTURE_ARGS if k in hparams}
        if is_launching_process():
            configured = self.config[subcommand].model
            for flag, name in model_flags(self.words):
                given = tuples_as_lists(configured.get(name))
                fixed = tuples_as_lists(architecture.get(name))
                if name in architecture and given != fixed:
                    print(
                        f"vpnext: warning: {flag}={given} ignored: the checkpoint fixes the "
                        f"architecture and has {name}={fixed} ({ckpt})",
                        file=sys.stderr,
                        flush=True,
                    )
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
        config.trainer.logger = place_loggers(config.trainer.logger, run_dir, name)
        ckpt = config.get("ckpt_path")
        # Outside fit nothing is saved; pointing the checkpoint callbacks at the folder the
        # checkpoint came from lets Lightning restore their state without a "dirpath changed" warning.
        ckpt_dir = (
            Path(str(ckpt)).parent if subcommand != "fit" and ckpt and Path(str(ckpt)).is_file() else None
        )
        self.trainer_defaults["callbacks"] = run_callbacks(
            run_dir, name, subcommand, ckpt_dir, config.run.ckpt_every_n_steps, config.run.ckpt_every_minutes
        )
        if subcommand in ("fit", "validate", "test") and config.run.pictures > 0:
            self.pictures = ValidationPictures(config.run.pictures, str(run_dir / "pictures"))
            self.trainer_defaults["callbacks"].append(self.pictures)
        self.trainer_defaults["callbacks"].append(AnnounceStart(self.announce))
        if wants_progress_bar(config.trainer):
            self.trainer_defaults["callbacks"].append(progress_bar(config.run.progress_every))
        if self.resuming:
            self.save_config_kwargs["overwrite"] = True  # the run's own config.yaml, rewritten
            # Read before the CSV logger starts (it deletes the file); written back by rank 0.
            rows = read_csv_rows(run_dir / "metrics.csv")
            self.trainer_defaults["callbacks"].append(ResumedCSVLog(rows, self.ckpt_step))

    def announce(self, moment: Literal["start", "end"]) -> None:
        """Print the run directory and the command that resumes (fit) or evaluates it (stderr).

        Printed by the process the user started, when the run starts and when it ends, so that
        a log file (nohup, SLURM, tee) names the folder whatever happens in between.
        """
        if not is_launching_process() or global_rank_from_env() != 0:
            return
        subcommand = str(self.subcommand)
        run_dir = self.run_dir
        ckpt = self.config[subcommand].get("ckpt_path")
        if moment == "start":
            what = "resumes" if self.resuming else "starts"
            source = f" from {ckpt} (step {self.ckpt_step})" if ckpt and subcommand != "fit" else ""
            lines = [f"{subcommand} {what}{source}; run directory: {run_dir}"]
        else:
            lines = [f"{subcommand} finished; run directory: {run_dir}"]
        if subcommand == "fit":
            lines.append(f"resume with: {resume_command(self.words, run_dir)}")
            if moment == "end":
                lines.append(f"evaluate with: {evaluate_command(run_dir)}")
                lines.append(f"results: {run_dir / 'results.json'}")
                if self.pictures is not None and self.pictures.last_path is not None:
                    lines.append(f"pictures: {self.pictures.last_path} (image | ground truth | prediction)")
        elif subcommand == "predict" and moment == "end":
            lines.append(f"predictions: {run_dir / 'predictions'}")
        elif moment == "end":
            lines.append(f"results: {run_dir / 'results.json'}")
        print("\n".join(f"vpnext: {line}" for line in lines), file=sys.stderr, flush=True)

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
            if is_launching_process():
                print(f"vpnext: init.weights: {summary}", file=sys.stderr, flush=True)


def run(args: list[str], in_process: bool, epilog: str | None = None) -> int:
    """Run ``vpnext fit|validate|test|predict ARGS``; returns the exit code.

    Args:
        args: The command line without the program name.
        in_process: Called as ``main(argv)`` (tests, notebooks) rather than as the console script.
        epilog: Text shown at the end of ``--help``.

    Raises:
        UserError, argparse.ArgumentError: Problems the user can fix (printed by the caller).
    """
    JOB.update(rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            # main(argv) is the explicit in-process API; Lightning warns whenever sys.argv also
            # holds arguments (e.g. pytest's), which is expected there.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            # The data module resumes mid-epoch itself (vpnext.data.resume), not through the loader.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
            cli = VPNeXtCLI(args if in_process else None, epilog=epilog)
        cli.announce("end")
    except Preempted as stop:
        if global_rank_from_env() == 0:
            run_dir = stop.checkpoint.parent.parent
            print(
                f"vpnext: stopped by {stop.signal_name} at step {stop.step}; "
                f"checkpoint saved: {stop.checkpoint}\n"
                f"vpnext: resume with: {resume_command(args, run_dir)}",
                file=sys.stderr,
                flush=True,
            )
        return PREEMPTED_EXIT_CODE
    return 0
