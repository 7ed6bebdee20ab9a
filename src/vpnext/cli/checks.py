"""Checks of a parsed ``vpnext fit|validate|test|predict`` configuration, as plain functions.

Each takes the parsed namespace (or words of the command line) and raises
:class:`~vpnext.errors.UserError` with one line naming the option, before any folder is created or
any class is built; none needs a Trainer, so each is testable on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from vpnext.checkpoint_io import CorruptCheckpointError, check_backbone_weights, check_weights_file
from vpnext.cli.suggest import close_words, did_you_mean
from vpnext.errors import UserError
from vpnext.run_dir import RunOptions

__all__ = [
    "CKPT_KEYWORDS",
    "RANGES",
    "check_inputs",
    "fold_root_dir",
    "model_flags",
    "tuples_as_lists",
    "read_checkpoint",
    "suggest_flag",
    "wants_progress_bar",
]

#: Checkpoint path keywords Lightning resolves itself (not files).
CKPT_KEYWORDS = {"best", "last", "hpc", "registry"}


def wants_progress_bar(trainer: Namespace) -> bool:
    """Whether to add vpnext's progress display: the bar is on and no callback is a progress bar."""
    if trainer.get("enable_progress_bar") is False:
        return False
    callbacks = trainer.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    names = [str(getattr(c, "class_path", None) or type(c).__name__) for c in callbacks]
    return not any(name.endswith("ProgressBar") for name in names)


def model_flags(words: Sequence[str]) -> list[tuple[str, str]]:
    """``(flag, argument name)`` for each ``--model.NAME`` on a command line."""
    flags = [word.split("=", 1)[0] for word in words if word.startswith("--model.")]
    return [(flag, flag[len("--model.") :]) for flag in dict.fromkeys(flags)]


def tuples_as_lists(value: Any) -> Any:
    """Tuples as lists, so that a YAML list and a Python tuple compare equal."""
    return list(value) if isinstance(value, tuple) else value


def suggest_flag(flag: str, options: list[str]) -> str:
    """ " (did you mean --model.x?)" for an unknown flag, compared by name within its section."""
    section, dot, name = flag.partition(".")
    names = {o[len(section) + 1 :]: o for o in options if o.startswith(section + ".")} if dot else {}
    if not names:
        return did_you_mean(close_words(flag, options))
    return did_you_mean([names[n] for n in close_words(name, list(names))])


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A ``vpnext fit`` checkpoint for ``--ckpt_path`` (memory-mapped, ``weights_only``).

    Raises:
        UserError: ``not a checkpoint: PATH (why)`` for a file that is unreadable or holds no
            Lightning ``state_dict`` (say, a plain state-dict file).
        UnsafeCheckpointError: The file carries pickled code.
    """
    try:
        checkpoint = check_weights_file(path)
    except CorruptCheckpointError as err:
        raise UserError(f"not a checkpoint: {path} ({err.reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(
            f"not a checkpoint: {path} (no Lightning state_dict; --ckpt_path takes a best.ckpt/last.ckpt "
            "of vpnext fit, --init.weights a file of weights)"
        )
    return checkpoint


def fold_root_dir(config: Namespace) -> None:
    """Honour ``--trainer.default_root_dir``: it names the folder of the runs, as ``--run.root`` does.

    The Trainer's ``default_root_dir`` becomes the run directory itself (set later). A value that
    is a run directory (it holds a ``config.yaml``) comes from a config saved by an older vpnext,
    which stored the run directory there; it is ignored.

    Raises:
        UserError: ``run.root`` and ``trainer.default_root_dir`` both given, and different.
    """
    root_dir = config.trainer.get("default_root_dir")
    config.trainer.default_root_dir = None
    if root_dir is None or (Path(root_dir) / "config.yaml").is_file():
        return
    if config.run.root != RunOptions.root and Path(config.run.root) != Path(root_dir):
        raise UserError(
            f"trainer.default_root_dir={root_dir} and run.root={config.run.root}: give one "
            "(both name the folder that holds the runs)"
        )
    config.run.root = str(root_dir)


def check_inputs(config: Namespace) -> None:
    """Fail before any folder is created for files that must exist."""
    ckpt = config.get("ckpt_path")
    if ckpt and str(ckpt) not in CKPT_KEYWORDS and not Path(str(ckpt)).is_file():
        raise UserError(f"ckpt_path: checkpoint file not found: {ckpt}")
    # Files from others are opened weights_only (no code runs) before anything else happens.
    if ckpt and Path(str(ckpt)).is_file():
        read_checkpoint(Path(str(ckpt)))
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
    for key, low, inclusive in RANGES:
        section, _, name = key.partition(".")
        value = config[section].get(name) if section in config else None
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric and (value < low or (value == low and not inclusive)):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise UserError(f"{key}: must be {bound}, got {value}")


#: Numeric options with a lower bound the classes themselves would only report deep inside torch:
#: (key, bound, bound allowed).
RANGES = (
    ("data.batch_size", 1, True),
    ("data.val_batch_size", 1, True),
    ("data.num_workers", 0, True),
    ("model.lr", 0.0, False),
    ("model.weight_decay", 0.0, True),
    ("model.warmup_iters", 0, True),
    ("trainer.max_epochs", -1, True),
)
