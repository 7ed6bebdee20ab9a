"""Two-process DDP on CPU through the ``vpnext`` command (``strategy=ddp``, gloo)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import SMALL_RUN_ARGS, only_run_dir, read_json

from vpnext.cli import main


def vpnext_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m vpnext.cli``."""
    script = Path(sys.executable).with_name("vpnext")
    if script.is_file():
        return [str(script)]
    found = shutil.which("vpnext")
    return [found] if found else [sys.executable, "-m", "vpnext.cli"]


@pytest.mark.slow
def test_ddp_fit_syncs_miou_like_a_single_process(tmp_path: Path) -> None:
    # 4 val images split 2 + 2: no sampler padding, so both runs score exactly the same pixels.
    data, root = tmp_path / "data", tmp_path / "runs"
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu"]
    args = ["fit", *SMALL_RUN_ARGS, *ddp, f"--data.root={data}", f"--run.root={root}", "--run.name=ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(vpnext_command() + args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]

    run = only_run_dir(root / "ddp", "_fit")  # both ranks wrote into one run directory
    distributed = read_json(run / "results.json")
    assert distributed["world_size"] == 2
    assert distributed["optimizer_steps"] == 2 and distributed["images_seen"] == 2 * 4 * 2

    ckpt = run / "checkpoints" / "last.ckpt"
    single_args = ["--trainer.devices=1", "--trainer.strategy=auto", "--ckpt_path", str(ckpt)]
    assert main(["validate", "--config", str(run / "config.yaml"), *single_args]) == 0
    single = read_json(only_run_dir(root / "ddp", "_validate") / "results.json")
    assert single["world_size"] == 1
    assert single["mIoU"] == distributed["mIoU"]
    assert single["per_class_iou"] == distributed["per_class_iou"]
