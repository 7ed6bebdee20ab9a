"""An interrupted sweep restarts where it stopped; the report ignores runs without complete results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import SMALL_RUN_ARGS, VITUP, FakeVpnext, use_fake, vpnext_command, write_run
from vpnext.tools import report
from vpnext.tools import sweep as runner


def _touch(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _run_dir(argv: list[str]) -> Path:
    return Path(next(a for a in argv if a.startswith("--run.dir=")).split("=", 1)[1])


def test_restart_skips_finished_resumes_cut_and_reruns_failed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    points = runner.plan_runs(VITUP, tmp_path)
    done, cut, failed, truncated, early = (p.run_dir for p in points[:5])
    _touch(done / "results.json", json.dumps({"mIoU": 0.5}))
    _touch(cut / "checkpoints" / "last.ckpt")  # stopped by a signal after a checkpoint
    _touch(failed / "checkpoints" / "last.ckpt")
    _touch(failed / runner.FAILED_MARK, "exit code 1")  # its process ended with an error
    _touch(truncated / "results.json", '{"mIoU": 0.')  # not a complete results.json
    _touch(early / "config.yaml")  # stopped before its first checkpoint

    fake = FakeVpnext()
    use_fake(monkeypatch, fake)
    assert runner.main([VITUP, "--runs-dir", str(tmp_path)]) == 0
    calls = {_run_dir(argv): argv for argv, _ in fake.calls}
    assert done not in calls  # finished: skipped
    assert calls[cut][-2:] == ["--ckpt_path", "last"]  # cut: resumed in place
    for run in (failed, truncated, early, *(p.run_dir for p in points[5:])):
        assert "--ckpt_path" not in calls[run]  # failed or never checkpointed: from scratch
    for run in (failed, truncated, early):
        assert (run.parent / f"{run.name}.failed-1").is_dir()  # the old files kept aside
    out = capsys.readouterr().out
    assert f"resume {cut.name}" in out and "6 done, 1 skipped, 0 failed" in out


def test_a_run_cut_by_a_signal_is_not_counted_and_the_sweep_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = runner.plan_runs(VITUP, tmp_path)[0].run_dir

    def cut_first(argv, env, log=None):  # noqa: ANN001, ANN202
        if f"--run.dir={first.as_posix()}" in argv:
            _touch(first / "checkpoints" / "last.ckpt")
            return runner.PREEMPTED_EXIT_CODE
        return FakeVpnext()(argv, env).returncode

    monkeypatch.setattr(runner, "_execute", cut_first)
    assert runner.main([VITUP, "--runs-dir", str(tmp_path)]) == runner.PREEMPTED_EXIT_CODE
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert any(line.startswith("cut ") and line.endswith(str(first)) for line in lines)
    assert "6 done, 0 skipped, 0 failed, 1 cut" in lines
    assert "run the same command again to continue" in captured.err
    assert not (first / "results.json").exists() and not (first / runner.FAILED_MARK).exists()


def _tiny_sweep(path: Path) -> Path:
    path.write_text(
        "program: vpnext\nmethod: grid\ncommand: [vpnext, fit, '${args}']\n"
        "parameters:\n  model.hiclr_depth: {values: [2]}\n"
    )
    return path


@pytest.mark.slow
def test_sweep_interrupted_by_sigint_resumes_the_cut_run(tmp_path: Path) -> None:
    sweep, runs = _tiny_sweep(tmp_path / "tiny.yaml"), tmp_path / "runs"
    overrides = [
        *SMALL_RUN_ARGS,
        "--trainer.max_steps=12",
        "--data.batch_size=2",
        "--run.ckpt_every_n_steps=2",
    ]
    overrides += [f"--data.root={tmp_path / 'data'}", "--trainer.limit_val_batches=0"]
    command = [*vpnext_command(), "sweep", str(sweep), "--runs-dir", str(runs), "--", *overrides]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not list(runs.glob("tiny/*/checkpoints/last.ckpt")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGINT)  # Ctrl-C in the sweep's terminal reaches the sweep only
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == runner.PREEMPTED_EXIT_CODE, err[-3000:]
    (first,) = [p for p in runs.glob("tiny/*") if p.is_dir()]
    assert (first / "checkpoints" / "last.ckpt").is_file() and not (first / "results.json").exists()
    assert "stopped by SIGTERM" in err and "run the same command again" in err

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resume {first.name}" in again.stdout
    runs_done = sorted(p for p in runs.glob("tiny/*") if p.is_dir())
    assert runs_done == [first] and runner.has_complete_results(first)
    assert json.loads((first / "results.json").read_text())["optimizer_steps"] == 12


def test_report_ignores_incomplete_runs_and_counts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "runs"
    write_run(root, "finished", 0.5)
    _touch(root / "finished" / "config.yaml")
    _touch(root / "cut" / "config.yaml")
    _touch(root / "cut" / "checkpoints" / "last.ckpt")
    _touch(root / "broken" / "config.yaml")
    _touch(root / "broken" / "results.json", '{"mIoU": 0.9, "split": "val", "mod')
    _touch(root / "finished" / "wandb" / "run-1" / "files" / "config.yaml")  # not a run
    assert report.main([str(root)]) == 0
    captured = capsys.readouterr()
    assert "vpnext report: ignored 2 incomplete run(s) without a complete results.json" in captured.err
    assert "broken, cut" in captured.err
    assert "90.00" not in captured.out and "50.00" in captured.out
