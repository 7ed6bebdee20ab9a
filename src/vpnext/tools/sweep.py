"""``vpnext sweep``: run every point of a W&B grid sweep file locally, without a W&B server.

The runs are the ones ``wandb agent`` would start: the grid is expanded with W&B's grid
semantics (parameters sorted by name, cartesian product of their ``values``, ``value`` held
fixed) and each command is built by wandb's own functions in ``wandb.sdk.launch.sweeps.utils``
plus the agent's macro substitution. The runner then appends the extra overrides given after
``--`` and a ``--run.dir`` of its own, and starts one ``vpnext fit`` process per point:
sequentially, or in parallel with one process per GPU listed in ``--gpus``
(``CUDA_VISIBLE_DEVICES`` set to that one GPU).

Run directories are deterministic, ``<runs-dir>/<sweep file stem>/<point>-<hash>``: ``<point>``
names the swept values (``upsampler=hiclr,hiclr_depth=3``) and ``<hash>`` is a digest of the whole
command, so the same sweep with other overrides (say, a 30-step smoke test) never reuses a full
run's results.

Interruption and restart: the same command started again

* skips every point whose run has a complete ``results.json`` (the CLI writes it atomically,
  last, and never for a run that was stopped or failed);
* resumes a run that was cut (a ``checkpoints/last.ckpt`` and no failure mark) with
  ``--ckpt_path last``;
* renames the folder of a failed attempt (marked :data:`FAILED_MARK` when its process exited
  with an error) or of a run cut before its first checkpoint to ``<dir>.failed-<k>`` and starts
  it afresh.

SIGINT, SIGTERM or SIGUSR1 to the sweep stop it cleanly: each running ``vpnext fit`` (started in
its own session, so that a terminal's Ctrl-C reaches it only once, through the sweep) gets
SIGTERM, finishes its step, writes its checkpoint and exits; no new run starts; the sweep exits
with the pre-emption code 75. A second signal interrupts the runs without a checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import itertools
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vpnext.schema import PREEMPTED_EXIT_CODE, PREEMPTION_SIGNALS, RESULTS_FILE

__all__ = ["SweepPoint", "agent_command", "grid_points", "load_sweep", "main", "plan_runs", "select_points"]

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


def _free_failed_dir(run_dir: Path) -> Path | None:
    """Move a failed attempt's leftovers aside; the CLI only writes into new or empty folders."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return None
    for k in itertools.count(1):
        target = run_dir.with_name(f"{run_dir.name}.failed-{k}")
        if not target.exists():
            run_dir.rename(target)
            return target
    raise AssertionError("unreachable")


def _child_env(gpu: str | None) -> dict[str, str]:
    env = dict(os.environ)
    # The sweep command starts with the bare `vpnext` (as W&B runs it); find the one installed
    # next to this interpreter even when the virtual environment is not activated.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


class _Stopper:
    """Signal handling of the sweep: stop launching, ask the running runs to checkpoint and stop."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.children: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def handle(self, signum: int, frame: Any) -> None:
        first = self.signal_name is None
        self.signal_name = self.signal_name or signal.Signals(signum).name
        if first:
            print(
                f"vpnext sweep: {signal.Signals(signum).name}: stopping; running runs write a checkpoint "
                "(signal again to stop them without one)",
                file=sys.stderr,
                flush=True,
            )
        # SIGTERM makes `vpnext fit` finish its step and checkpoint; a second SIGINT stops it at once.
        with self.lock:
            for child in self.children:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGTERM if first else signal.SIGINT)


_STOP = _Stopper()


def _execute(argv: list[str], env: dict[str, str], log: Path | None = None) -> int:
    """Run one ``vpnext fit`` in its own session and wait for it; returns its exit code."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log.open("a")) if log is not None else None
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True
        )
        with _STOP.lock:
            _STOP.children.add(proc)
        try:
            return proc.wait()
        finally:
            with _STOP.lock:
                _STOP.children.discard(proc)


def _run_one(point: SweepPoint, gpu: str | None, to_log: bool) -> None:
    if _STOP.signal_name is not None:
        return
    point.resume = is_resumable(point.run_dir)
    if not point.resume:
        moved = _free_failed_dir(point.run_dir)
        if moved is not None:
            print(f"vpnext sweep: kept the failed attempt's files in {moved}", flush=True)
    point.run_dir.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"[GPU {gpu}] " if gpu is not None else ""
    verb = "resume" if point.resume else "start"
    print(f"vpnext sweep: {prefix}{verb} {point.run_dir.name}", flush=True)
    start = time.monotonic()
    if to_log:
        point.log = point.run_dir.with_name(point.run_dir.name + ".log")
        point.log.write_text("")
    code = _execute(point.argv, _child_env(gpu), point.log)
    point.seconds = time.monotonic() - start
    point.returncode = code
    if code == 0 and has_complete_results(point.run_dir):
        point.status = "done"
    elif code == PREEMPTED_EXIT_CODE and is_resumable(point.run_dir):
        point.status = "cut"  # resumed at the next start
    else:
        point.status = "failed"
        point.run_dir.mkdir(parents=True, exist_ok=True)
        (point.run_dir / FAILED_MARK).write_text(f"exit code {code}\n")
    print(f"vpnext sweep: {prefix}{point.status} {point.run_dir.name} ({point.seconds:.0f} s)", flush=True)


def run_points(points: Sequence[SweepPoint], gpus: Sequence[str] = ()) -> None:
    """Run the pending points: in this process's order, or one at a time on each GPU."""
    pending = [p for p in points if p.status == "pending"]
    if len(gpus) <= 1:
        for point in pending:
            _run_one(point, gpus[0] if gpus else None, to_log=False)
        return
    work: queue.Queue[SweepPoint] = queue.Queue()
    for point in pending:
        work.put(point)

    def worker(gpu: str) -> None:
        while True:
            try:
                point = work.get_nowait()
            except queue.Empty:
                return
            _run_one(point, gpu, to_log=True)  # interleaved progress bars would be unreadable

    threads = [threading.Thread(target=worker, args=(gpu,), daemon=True) for gpu in gpus]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _summary(points: Sequence[SweepPoint]) -> str:
    lines = ["", "status   seconds  run"]
    for p in points:
        seconds = "-" if p.seconds is None else f"{p.seconds:.0f}"
        note = (
            f"  (exit {p.returncode}{', log ' + str(p.log) if p.log else ''})" if p.status == "failed" else ""
        )
        lines.append(f"{p.status:<8} {seconds:>7}  {p.run_dir}{note}")
    counts = {s: sum(p.status == s for p in points) for s in ("done", "skipped", "failed", "cut", "pending")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n or s in ("done", "skipped", "failed")))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpnext sweep",
        description="Run every point of a W&B grid sweep file locally (no W&B server needed).",
        epilog="Arguments after `--` are appended to every run, e.g. "
        "`-- --data.dataset=synthetic --trainer.max_steps=20`.",
    )
    parser.add_argument("sweep_file", help="sweep YAML, e.g. sweeps/vitup.yaml")
    parser.add_argument("--runs-dir", default="runs/sweeps", help="parent of the runs (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME=VALUE[,NAME=VALUE]",
        help="run only the points with these swept values, as in the run-directory names "
        "(e.g. hiclr_depth=3 or aux=vcr,aux_layers=2); repeatable",
    )
    parser.add_argument(
        "--gpus", default="", help="comma-separated GPU ids: one run at a time on each (default: sequential)"
    )
    parser.add_argument(
        "--export",
        metavar="FILE",
        help="write the sweep file with the extra overrides in its command (for `wandb sweep`); run nothing",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``vpnext sweep SWEEP_FILE [--dry-run] [--only NAME=VALUE] [--runs-dir DIR] [--gpus 0,1] [-- ...]``.

    Returns:
        0 when every run finished (or had finished before), 1 when any failed, 2 on usage errors.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in args:
        split = args.index("--")
        args, overrides = args[:split], args[split + 1 :]
    parser = build_parser()
    options = parser.parse_args(args)
    try:
        if options.export:
            print(f"vpnext sweep: wrote {export_sweep(options.sweep_file, options.export, overrides)}")
            return 0
        points = plan_runs(options.sweep_file, options.runs_dir, overrides)
        if options.only:
            points = select_points(points, options.only)
        clashes = overridden_sweep_keys(load_sweep(options.sweep_file), overrides)
    except (OSError, ValueError, yaml.YAMLError) as err:
        parser.error(str(err))
    for clash in clashes:
        print(
            f"vpnext sweep: warning: {clash} overrides a swept value in every run",
            file=sys.stderr,
            flush=True,
        )
    gpus = [g.strip() for g in options.gpus.split(",") if g.strip()]

    for point in points:
        if has_complete_results(point.run_dir):
            point.status = "skipped"
        else:
            point.resume = is_resumable(point.run_dir)
    if options.dry_run:
        if gpus:
            print(f"# one run at a time on each of CUDA_VISIBLE_DEVICES={', '.join(gpus)}")
        for point in points:
            mark = "# done, skipped: " if point.status == "skipped" else ""
            print(f"{mark}{' '.join(map(_quote, point.argv))}")
        return 0
    _STOP.signal_name = None
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in PREEMPTION_SIGNALS:
            if hasattr(signal, name):
                previous[name] = signal.signal(getattr(signal, name), _STOP.handle)
    try:
        run_points(points, gpus)
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
    print(_summary(points))
    if _STOP.signal_name is not None or any(p.status == "cut" for p in points):
        print(
            f"vpnext sweep: interrupted{' by ' + _STOP.signal_name if _STOP.signal_name else ''}; "
            "run the same command again to continue (finished runs are skipped, cut ones resume)",
            file=sys.stderr,
            flush=True,
        )
        return PREEMPTED_EXIT_CODE
    return 1 if any(p.status == "failed" for p in points) else 0


if __name__ == "__main__":
    raise SystemExit(main())
