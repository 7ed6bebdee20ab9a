"""DDP on 2 CPU processes: a failure on one rank ends the whole job quickly, its error shown once."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest

from tests.helpers import SMALL_RUN_ARGS, make_folder, vpnext_command

TESTS = Path(__file__).resolve().parent
DDP = ["--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu"]


class FailOnRank(L.Callback):
    """Test helper: raise in the training step of global rank ``rank``."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_rank == self.rank:
            raise ZeroDivisionError("injected failure in train")


def _run(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.monotonic()
    proc = subprocess.run(
        vpnext_command() + ["fit", *SMALL_RUN_ARGS, *DDP, f"--run.root={tmp_path / 'runs'}", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    return proc, time.monotonic() - start


@pytest.mark.slow
@pytest.mark.parametrize(("rank", "where"), [(1, "train"), (0, "val")])
def test_a_failing_rank_ends_the_job_with_its_error_once(rank: int, where: str, tmp_path: Path) -> None:
    """Two launches, two ways a job can hang: rank 1 raises in a training step while rank 0 goes on to
    the gradient all-reduce; rank 0 cannot load a validation image while rank 1 waits for the metric
    sync. The second also covers an error raised in a data loader under DDP."""
    if where == "val":
        # A dataset copied in half: the first val image's pixels are cut off after a valid header, so
        # the up-front header scan passes and rank 0, which draws it, fails while loading it.
        root = make_folder(tmp_path / "ds", ids=tuple("abcdefgh"))
        make_folder(root, ids=("v1", "v2"), split="val")
        image = root / "images" / "val" / "v1.png"
        image.write_bytes(image.read_bytes()[:120])
        args = ["--data.dataset=folder", f"--data.root={root}", "--data.crop_size=32", "--data.val_split=val"]
        expected = f"[rank 0] {image}: cannot decode image"
    else:
        callback = f"{{class_path: test_distributed_failures.FailOnRank, init_args: {{rank: {rank}}}}}"
        args = [f"--data.root={tmp_path / 'data'}", f"--trainer.callbacks+={callback}"]
        expected = f"[rank {rank}] ZeroDivisionError: injected failure in {where}"
    proc, seconds = _run(args, tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("vpnext: error:")]
    assert proc.returncode != 0
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert seconds < 300  # no hang until a collective's 30-minute timeout
    assert not list((tmp_path / "runs").rglob("results.json"))
