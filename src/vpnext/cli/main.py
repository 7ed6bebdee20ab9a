"""``vpnext``'s entry point: dispatch to LightningCLI (:mod:`vpnext.cli.lightning`) or to a tool."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from argparse import ArgumentError
from collections.abc import Callable, Sequence
from pathlib import Path

from vpnext import __version__
from vpnext.cli.suggest import close_words, did_you_mean
from vpnext.errors import describe
from vpnext.memory import tune_malloc
from vpnext.run_dir import (
    JOB,
    RUN_DIR_ENV,
    UserError,
)

__all__ = ["EXTRA_COMMANDS", "IMAGE_PREDICT", "SUBCOMMANDS", "main", "top_level_help"]

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

DEBUG_ENV = "VPNEXT_DEBUG"
#: The LightningCLI subcommands (``LightningCLI.subcommands()``), known without importing Lightning.
SUBCOMMANDS = {
    "fit": "train a model; prints its run directory and the command that resumes it",
    "validate": "evaluate a checkpoint on the validation split (results.json in a new run directory)",
    "test": "evaluate a checkpoint on the test split",
    "predict": "label images: vpnext predict --ckpt_path C INPUT... (see vpnext predict --help)",
}


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


def top_level_help() -> str:
    """``vpnext --help``: the commands, without building any parser (so without importing torch)."""
    width = max(map(len, [*SUBCOMMANDS, *EXTRA_COMMANDS])) + 2
    lines = [
        "usage: vpnext [-h] [--version] [--debug] COMMAND ...",
        "",
        f"VPNeXt semantic segmentation with a plain ViT (vpnext {__version__}).",
        "",
        "training and evaluation (LightningCLI; each takes --help, --print_config, --config FILE):",
        *(f"  {name:<{width}}{text}" for name, text in SUBCOMMANDS.items()),
        "",
        "tools (each takes --help):",
        *(f"  {name}" for name in sorted(EXTRA_COMMANDS)),
        "",
        "options:",
        "  -h, --help  show this message and exit",
        "  --version   print the version and exit",
        "  --debug     show the full traceback of an error (also VPNEXT_DEBUG=1)",
    ]
    return "\n".join(lines)


def _check_command(word: str) -> None:
    """Refuse an unknown first word, with the commands it is close to."""
    if word.startswith("-") or word in SUBCOMMANDS:
        return
    commands = [*SUBCOMMANDS, *(c.split()[0] for c in EXTRA_COMMANDS)]
    raise UserError(f"unknown command {word!r}{did_you_mean(close_words(word, commands))}; see vpnext --help")


def _extra_commands_epilog() -> str:
    names = ", ".join(f"'vpnext {name}'" for name in sorted(EXTRA_COMMANDS))
    return f"Other commands: {names} (each takes --help)."


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
    tune_malloc()  # large CPU buffers reused across passes (vpnext.memory; VPNEXT_MALLOC=0: glibc's defaults)
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
    try:
        if args[:1] == ["--version"]:
            print(f"vpnext {__version__}")
            return 0
        if not args or args[:1] in (["-h"], ["--help"]):
            print(top_level_help())
            return 0 if args else 2
        extra = _match_extra(args)
        if extra is not None:
            return int(_load(EXTRA_COMMANDS[extra[0]])(extra[1]) or 0)
        if _is_image_predict(args):
            return int(_load(IMAGE_PREDICT)(args[1:]) or 0)
        _check_command(args[0])
        _check_config_files(args)
        from vpnext.cli.lightning import run  # Lightning and torch: only for these commands

        return run(args, in_process=argv is not None, epilog=_extra_commands_epilog())
    except ArgumentError as err:
        known = args[:1] if args and args[0] in SUBCOMMANDS else []
        hint = " ".join(["vpnext", *known, "--help"])
        print(f"vpnext: error: {' '.join(str(err).split())} (see {hint})", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # argument parsers report their own errors, then exit
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
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
        print(f"vpnext: error: {rank}{describe(err)} (VPNEXT_DEBUG=1 shows the traceback)", file=sys.stderr)
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
