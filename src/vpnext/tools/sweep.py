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
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from vpnext.schema import PREEMPTED_EXIT_CODE, PREEMPTION_SIGNALS
from vpnext.tools.sweep_plan import (
    FAILED_MARK,
    SweepPoint,
    _quote,
    agent_command,
    export_sweep,
    grid_points,
    has_complete_results,
    is_resumable,
    load_sweep,
    overridden_sweep_keys,
    plan_runs,
    select_points,
)

__all__ = ["SweepPoint", "agent_command", "grid_points", "load_sweep", "main", "plan_runs", "select_points"]


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
