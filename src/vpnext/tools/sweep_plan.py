"""The runs of a W&B grid sweep file, as ``wandb agent`` would start them: the grid, each point's
command and deterministic run directory, and which runs are done or resumable. :mod:`vpnext.tools.sweep`
runs them."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vpnext.schema import RESULTS_FILE

__all__ = [
    "FAILED_MARK",
    "SweepPoint",
    "agent_command",
    "export_sweep",
    "grid_points",
    "has_complete_results",
    "is_resumable",
    "load_sweep",
    "overridden_sweep_keys",
    "plan_runs",
    "point_name",
    "select_points",
]


#: Written into a run folder whose process exited with an error: the next start reruns it afresh.
FAILED_MARK = ".sweep-failed"


@dataclass
class SweepPoint:
    """One grid point of a sweep and the run that computes it.

    Args:
        params: Parameter name -> value, as W&B puts it in the run config.
        command: The command ``wandb agent`` would run, plus the extra overrides.
        run_dir: Where the run writes (appended to the command as ``--run.dir``).
    """

    params: dict[str, Any]
    command: list[str]
    run_dir: Path
    status: str = "pending"
    returncode: int | None = None
    seconds: float | None = None
    log: Path | None = field(default=None)

    resume: bool = False

    @property
    def argv(self) -> list[str]:
        """The full command line this runner starts (``--ckpt_path last`` when resuming)."""
        resume = ["--ckpt_path", "last"] if self.resume else []
        return [*self.command, f"--run.dir={self.run_dir.as_posix()}", *resume]


def has_complete_results(run_dir: Path) -> bool:
    """Whether ``run_dir/results.json`` exists and is a whole JSON record with an ``mIoU`` entry."""
    try:
        record = json.loads((run_dir / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "mIoU" in record


def is_resumable(run_dir: Path) -> bool:
    """A run that was cut (not failed) after writing a checkpoint."""
    return (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / FAILED_MARK).exists()


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read a sweep YAML file and check it is a grid this runner can expand exactly.

    Raises:
        ValueError: Not a grid, no ``command``, or a parameter that is not ``value``/``values``
            (distributions and nested ``parameters:`` blocks have no fixed grid).
    """
    sweep = yaml.safe_load(Path(path).read_text())
    if not isinstance(sweep, dict):
        raise ValueError(f"{path}: not a sweep file (expected a mapping)")
    if sweep.get("method") != "grid":
        raise ValueError(
            f"{path}: method is {sweep.get('method')!r}; only 'grid' sweeps have a fixed run list"
        )
    if not sweep.get("command"):
        raise ValueError(
            f"{path}: needs a 'command:' list (the default one runs '${{interpreter}} <program>')"
        )
    for name, spec in (sweep.get("parameters") or {}).items():
        if not isinstance(spec, dict) or ("value" in spec) == ("values" in spec) or len(spec) != 1:
            raise ValueError(f"{path}: parameter {name!r} must have exactly one key, 'value' or 'values'")
        if "values" in spec and not (isinstance(spec["values"], list) and spec["values"]):
            raise ValueError(f"{path}: parameter {name!r}: 'values' must be a non-empty list")
    return sweep


def grid_points(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """All grid points, in the order W&B's grid search proposes them.

    W&B's sweep engine sorts the parameters by name and walks the cartesian product of the
    ``values`` lists; ``value`` parameters are the same in every run.
    """
    params = sorted((sweep.get("parameters") or {}).items())
    names = [name for name, _ in params]
    choices = [spec["values"] if "values" in spec else [spec["value"]] for _, spec in params]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]


def agent_command(sweep: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The command ``wandb agent`` runs for one grid point.

    ``create_sweep_command`` and ``create_sweep_command_args`` are wandb's; the macro loop mirrors
    the agent's (``wandb_agent.Agent._command_run``), which is not a separate function there.

    Raises:
        ValueError: A macro the agent fills in from files it writes itself (``${args_json_file}``).
    """
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    # create_sweep_command edits the list in place; the sweep dict must stay reusable.
    template = sweep_utils.create_sweep_command(copy.deepcopy(sweep["command"]))
    macros: dict[str, list[str]] = sweep_utils.create_sweep_command_args(
        {"args": {name: {"value": value} for name, value in params.items()}}
    )
    macros |= {"interpreter": ["python"], "env": ["/usr/bin/env"], "program": [str(sweep.get("program", ""))]}
    command: list[str] = []
    for chunk in map(str, template):
        if chunk.startswith("${") and chunk.endswith("}"):
            if chunk[2:-1] not in macros:
                raise ValueError(f"sweep command macro {chunk} is not supported by the local runner")
            command += macros[chunk[2:-1]] or []
        else:
            command.append(chunk)
    return command


def point_name(sweep: dict[str, Any], params: dict[str, Any], command: Sequence[str]) -> str:
    """Directory name of a grid point: the swept values and a digest of the whole command."""
    swept = {name for name, spec in (sweep.get("parameters") or {}).items() if "values" in spec}
    parts: list[str] = []
    for name in sorted(swept):
        value = params[name]
        if isinstance(value, dict):
            parts += [f"{k}={_slug(v)}" for k, v in value.items()]
        else:
            parts.append(f"{name.rsplit('.', 1)[-1]}={_slug(value)}")
    digest = hashlib.sha256("\0".join(command).encode()).hexdigest()[:8]
    return f"{','.join(parts) or 'default'}-{digest}"


def plan_runs(
    sweep_file: str | Path, runs_dir: str | Path = "runs/sweeps", overrides: Sequence[str] = ()
) -> list[SweepPoint]:
    """Every run of a sweep: its parameters, command (with ``overrides`` appended) and directory."""
    sweep = load_sweep(sweep_file)
    root = Path(runs_dir) / Path(sweep_file).stem
    points = []
    for params in grid_points(sweep):
        command = [*agent_command(sweep, params), *overrides]
        points.append(SweepPoint(params, command, root / point_name(sweep, params, command)))
    return points


def _swept_values(point: SweepPoint) -> list[str]:
    """The ``name=value`` parts of a point's run-directory name (its hash left out)."""
    return point.run_dir.name.rsplit("-", 1)[0].split(",")


def select_points(points: Sequence[SweepPoint], specs: Sequence[str]) -> list[SweepPoint]:
    """The points that match any of ``specs``, in sweep order.

    A spec is one or more ``name=value`` parts joined by commas, written as in the run-directory
    names (``hiclr_depth=3``, ``aux=vcr,aux_layers=2``); a point matches when it has every part.

    Raises:
        ValueError: A spec that matches no point (the message lists the points).
    """
    chosen: set[int] = set()
    for spec in specs:
        wanted = set(spec.split(","))
        matched = {i for i, point in enumerate(points) if wanted <= set(_swept_values(point))}
        if not matched:
            names = "; ".join(",".join(_swept_values(p)) for p in points)
            raise ValueError(f"--only {spec} matches no point of the sweep; its points: {names}")
        chosen |= matched
    return [point for i, point in enumerate(points) if i in chosen]


def overridden_sweep_keys(sweep: dict[str, Any], overrides: Sequence[str]) -> list[str]:
    """Extra overrides that set a swept key (they would make several grid points identical).

    Both ``--model.x=value`` options and ``--config FILE`` files are checked; a file is named
    with the swept keys it sets, e.g. ``--config experiments/quickstart.yaml (model.upsampler)``.
    """
    keys = set()
    for name, spec in (sweep.get("parameters") or {}).items():
        if "values" not in spec:
            continue
        keys.add(name)
        for value in spec["values"]:
            if isinstance(value, dict):
                keys |= {f"{name}.{k}" for k in value}
    clashes = []
    for i, option in enumerate(overrides):
        name, _, inline = option.removeprefix("--").partition("=")
        if not option.startswith("--"):
            continue
        if name == "config":
            path = inline or (overrides[i + 1] if i + 1 < len(overrides) else "")
            hit = sorted(keys & _dotted_keys(path))
            if hit:
                clashes.append(f"--config {path} ({', '.join(hit)})")
        elif name in keys:
            clashes.append(option)
    return clashes


def _dotted_keys(config_file: str) -> set[str]:
    """The leaf key paths a YAML config file sets (``model.aux``...); empty if unreadable."""
    try:
        tree = yaml.safe_load(Path(config_file).read_text())
    except (OSError, yaml.YAMLError):
        return set()  # the CLI reports a missing or broken file itself
    found: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            found.add(prefix[:-1])

    walk(tree, "")
    return found


def export_sweep(sweep_file: str | Path, out: str | Path, overrides: Sequence[str]) -> Path:
    """Write a copy of a sweep file whose command also passes ``overrides`` (for ``wandb sweep``)."""
    sweep = load_sweep(sweep_file)
    sweep["command"] = [*sweep["command"], *overrides]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Generated by `vpnext sweep {Path(sweep_file).as_posix()} --export`; edit the original.\n"
    out.write_text(header + yaml.safe_dump(sweep, sort_keys=False, width=1000))
    return out


def _slug(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(map(_slug, value))
    text = str(value).lower() if isinstance(value, bool) or value is None else str(value)
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def _quote(arg: str) -> str:
    """Shell quoting that keeps the rendered dicts readable: double quotes when that is safe."""
    if shlex.quote(arg) == arg or any(c in arg for c in '"$`\\!'):
        return shlex.quote(arg)
    return f'"{arg}"'
