"""Run directories: where a ``vpnext fit|validate|test|predict`` run writes, and how to find it again.

Pure Python (no torch), so that the ``vpnext`` entry point can import it without the start-up
cost of Lightning. Every run writes into its own directory (:func:`resolve_run_dir`), by default
``<run.root>/<experiment>/<YYYYmmdd-HHMMSS>_<subcommand>``; ``--trainer.default_root_dir`` is the
same as ``--run.root``. The CLI prints the directory when a run starts and ends, together with
the command that resumes it (:func:`resume_command`) or evaluates it (:func:`evaluate_command`).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from vpnext.errors import UserError

__all__ = [
    "JOB",
    "RUN_DIR_ENV",
    "InitOptions",
    "RunOptions",
    "UserError",
    "evaluate_command",
    "experiment_name",
    "find_last_checkpoint",
    "global_rank_from_env",
    "is_launching_process",
    "resolve_run_dir",
    "resume_command",
]

#: Environment variable through which the launching process hands its run directory to the
#: processes Lightning starts for the other DDP ranks (they re-run the same command line).
RUN_DIR_ENV = "_VPNEXT_RUN_DIR"
#: The lines a command prints when it starts and ends: its run directory, how to resume or evaluate
#: it, where its results are. Anything else starting ``vpnext:`` on stderr is an error or warning.
ANNOUNCEMENT = re.compile(
    r"vpnext: ((fit|validate|test|predict) (starts|resumes|finished)"
    r"|(resume with|evaluate with|results|pictures|predictions):)"
)


@dataclass
class RunOptions:
    """Where a run writes its outputs.

    Args:
        root: Folder holding every experiment's runs (``--trainer.default_root_dir`` sets it too).
        name: Experiment name; default: the stem of the first ``--config`` file, else ``default``.
        dir: Exact run directory (must be new or empty, except when resuming it with
            ``--ckpt_path last``); default ``<root>/<name>/<YYYYmmdd-HHMMSS>_<subcommand>``.
        ckpt_every_n_steps: Also write ``checkpoints/last.ckpt`` every N optimiser steps, whatever
            the validation interval (``None``: only at validation and at the end).
        ckpt_every_minutes: Also write ``checkpoints/last.ckpt`` after this many minutes of
            training since the last one (``None``: off; exclusive with ``ckpt_every_n_steps``).
        pictures: Validation images shown as image / ground truth / prediction after every
            validation (``<run dir>/pictures/``, TensorBoard, W&B); 0 turns them off.
        progress_every: When stdout is not a terminal (nohup, SLURM, tee), seconds between the
            plain progress lines that replace the bar (0: one line per step).
    """

    root: str = "runs"
    name: str | None = None
    dir: str | None = None
    ckpt_every_n_steps: int | None = None
    ckpt_every_minutes: float | None = None
    pictures: int = 4
    progress_every: float = 30.0


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


#: This process's place in a multi-process job, recorded when the Trainer is set up
#: (``vpnext.training.job.JobRecorder``; the CLI labels its error lines with it);
#: ``rank 0, world_size 1`` outside one.
JOB = {"rank": 0, "world_size": 1}


def global_rank_from_env() -> int:
    """The global rank an external launcher (torchrun, SLURM) gave this process; 0 otherwise."""
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
    rank = global_rank_from_env()
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


def evaluate_command(run_dir: Path, checkpoint: Path | None = None, subcommand: str = "validate") -> str:
    """The command that evaluates a finished fit: its own config and (by default) its ``last.ckpt``."""
    checkpoint = checkpoint or run_dir / "checkpoints" / "last.ckpt"
    config = run_dir / "config.yaml"
    return shlex.join(["vpnext", subcommand, "--config", str(config), "--ckpt_path", str(checkpoint)])


def is_launching_process() -> bool:
    """True in the process a user started (not a rank process of a multi-process job)."""
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"))
