"""Pre-emption and exact resume: signals write a checkpoint, ``--ckpt_path last`` continues the run.

The equality test interrupts a fit in the middle of its second epoch (after a validation and an
epoch boundary) by sending the process a signal from a callback at a fixed step, resumes it with
the printed command, and compares it with the same fit run without interruption: weights,
global step, metrics. Dropout is on and the loader has two workers, so the global random state,
the data order and the per-sample augmentation seeds all have to be restored for it to pass.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.helpers import read_json, vpnext_command
from vpnext import cli
from vpnext.cli import main
from vpnext.schema import PREEMPTED_EXIT_CODE

#: 8 train images in batches of 2: 4 steps per epoch, 8 steps in all, validation after each epoch.
RESUME_ARGS = [
    "--trainer.accelerator=cpu",
    "--trainer.max_steps=8",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.deterministic=true",
    "--model.decoder_dim=32",
    "--model.pyramid_dim=16",
    "--model.num_heads=4",
    "--model.warmup_iters=3",
    "--data.crop_size=64",
    "--data.batch_size=2",
    "--data.num_workers=2",
    "--data.synthetic_kwargs={num_train: 8, num_val: 2, image_size: 64}",
]


class SignalAtStep(L.Callback):
    """Test helper: send this process ``signal_name`` when training step ``step`` starts."""

    def __init__(self, step: int, signal_name: str = "SIGTERM") -> None:
        self.step = step
        self.signal_name = signal_name

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))


def _signal_callback(step: int, name: str) -> str:
    init = f"{{step: {step}, signal_name: {name}}}"
    return f"--trainer.callbacks+={{class_path: test_resume.SignalAtStep, init_args: {init}}}"


def _weights(ckpt: Path) -> tuple[dict[str, torch.Tensor], int]:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return state["state_dict"], int(state["global_step"])


def _train_losses(run: Path) -> dict[int, str]:
    import csv

    with open(run / "metrics.csv") as handle:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(handle) if r.get("train/loss")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The uninterrupted run and the data folder it used."""
    data, root = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("runs")
    assert main(["fit", *RESUME_ARGS, f"--data.root={data}", f"--run.root={root}", "--run.name=ref"]) == 0
    (run,) = (root / "ref").iterdir()
    return run, data


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted(
    reference: tuple[Path, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ref_run, data = reference
    signal_name = "SIGTERM"
    args = ["fit", *RESUME_ARGS, f"--data.root={data}", f"--run.root={tmp_path}", "--run.name=cut"]
    assert main([*args, _signal_callback(5, signal_name)]) == PREEMPTED_EXIT_CODE
    err = capfd.readouterr().err
    (run,) = (tmp_path / "cut").iterdir()
    _, step = _weights(run / "checkpoints" / "last.ckpt")
    assert step == 6  # the step that was running when the signal came finished first
    assert not (run / "results.json").exists()  # an interrupted run is not a result
    assert f"stopped by {signal_name} at step 6; checkpoint saved: {run / 'checkpoints' / 'last.ckpt'}" in err
    command = next(line for line in err.splitlines() if "resume with:" in line).split("resume with: ")[1]
    resume = shlex.split(command)
    assert resume[0] == "vpnext" and resume[-2:] == ["--ckpt_path", "last"]
    assert _signal_callback(5, signal_name) in resume  # the exact command line, plus the resume options

    # The printed command minus the helper that sends the signal (it would fire again at step 5 of
    # a fresh run, not of a resumed one, but keep the comparison free of it).
    resume = [a for a in resume[1:] if a != _signal_callback(5, signal_name)]
    assert main(resume) == 0
    assert list((tmp_path / "cut").iterdir()) == [run]  # continued in place, no new run folder

    ref_weights, ref_step = _weights(ref_run / "checkpoints" / "last.ckpt")
    weights, step = _weights(run / "checkpoints" / "last.ckpt")
    assert step == ref_step == 8
    diff = max((weights[k] - ref_weights[k]).abs().max().item() for k in ref_weights)
    print(f"resume max abs weight difference: {diff:.3g}")
    assert diff <= 1e-6
    ref_results, results = read_json(ref_run / "results.json"), read_json(run / "results.json")
    assert results["mIoU"] == pytest.approx(ref_results["mIoU"], abs=1e-6)
    assert results["per_class_iou"] == pytest.approx(ref_results["per_class_iou"], abs=1e-6)
    assert results["optimizer_steps"] == 8 and results["images_seen"] == ref_results["images_seen"] == 16
    ref_losses, losses = _train_losses(ref_run), _train_losses(run)
    assert [float(losses[s]) for s in range(8)] == pytest.approx(
        [float(ref_losses[s]) for s in range(8)], abs=1e-6
    )


def test_ckpt_path_last_without_a_run_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = main(["fit", "--ckpt_path", "last", f"--run.root={tmp_path}", "--run.name=nothing"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "ckpt_path=last: no checkpoint of experiment 'nothing'" in err[0]
    assert str(tmp_path / "nothing" / "*" / "checkpoints" / "last.ckpt") in err[0]
    assert not any(tmp_path.iterdir())  # refused before any folder was made


def test_ckpt_path_last_picks_the_latest_run_of_the_experiment(tmp_path: Path) -> None:
    old = tmp_path / "exp" / "20260101-000000_fit" / "checkpoints" / "last.ckpt"
    new = tmp_path / "exp" / "20250101-000000_fit" / "checkpoints" / "last.ckpt"
    other = tmp_path / "other" / "20270101-000000_fit" / "checkpoints" / "last.ckpt"
    for i, path in enumerate([old, new, other]):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    assert cli.find_last_checkpoint(cli.RunOptions(root=str(tmp_path)), "exp") == new  # newest file
    assert cli.find_last_checkpoint(cli.RunOptions(dir=str(old.parent.parent)), "exp") == old


@pytest.mark.parametrize("signal_name", ["SIGUSR1", "SIGINT"])
def test_interval_checkpoints_are_written_between_validations(
    signal_name: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    args = [*RESUME_ARGS, "--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--data.num_workers=0"]
    args += [f"--data.root={tmp_path / 'data'}", f"--run.root={tmp_path}", "--run.name=iv"]
    args += ["--run.ckpt_every_n_steps=1", _signal_callback(2, signal_name)]
    saved: list[int] = []
    original = torch.save

    def spy(obj, f, *a, **k):  # noqa: ANN001, ANN202
        if isinstance(obj, dict) and "global_step" in obj:
            saved.append(obj["global_step"])
        return original(obj, f, *a, **k)

    torch.save = spy
    try:
        # SLURM's warning signal and a first Ctrl-C stop with a checkpoint like SIGTERM does.
        assert main(["fit", *args]) == PREEMPTED_EXIT_CODE
    finally:
        torch.save = original
    assert saved == [1, 2, 3]  # steps 1 and 2 from the interval (no validation ran), 3 at the signal
    assert f"stopped by {signal_name} at step 3" in capfd.readouterr().err


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_loader_workers(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    """What ``scancel`` does: SIGTERM to every process of the job, DataLoader workers included."""
    _, data = reference
    args = ["fit", *RESUME_ARGS, "--trainer.max_steps=400", "--run.ckpt_every_n_steps=2"]
    args += [f"--data.root={data}", f"--run.root={tmp_path}", "--run.name=pg"]
    # PYTHONFAULTHANDLER: if the group ever hangs after the SIGTERM (seen once in a full suite run,
    # 2026-12-06), SIGABRT makes every process print its threads' stacks into the failure message.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(
        vpnext_command() + args, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("pg/*/checkpoints/last.ckpt")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)
        _, err = proc.communicate(timeout=60)
        pytest.fail(f"the process group did not exit within 300 s of SIGTERM; its stacks:\n{err[-12000:]}")
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-3000:]
    assert "DataLoader worker" not in err and "Traceback" not in err
    (ckpt,) = tmp_path.glob("pg/*/checkpoints/last.ckpt")
    _, step = _weights(ckpt)
    assert 2 <= step < 400
    assert f"stopped by SIGTERM at step {step}" in err and "--ckpt_path last" in err
