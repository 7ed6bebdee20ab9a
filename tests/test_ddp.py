"""DDP on CPU through the ``vpnext`` command (``strategy=ddp``, gloo): every image scored once.

The val split has 7 images, a multiple of neither 2 nor 3, so a padding distributed sampler would
score an image twice on 2 processes and two images twice on 3. Every distributed evaluation is
compared with one process scoring the same checkpoint: the synced confusion counts are integers
summed over ranks, so mIoU and per-class IoU must come out bit-identical, and ``results.json`` must
say that all 7 images were scored, each once.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import SMALL_RUN_ARGS, only_run_dir, read_json, torch_threads, vpnext_command
from vpnext.cli import main
from vpnext.tools import report

VAL_IMAGES = 7
ARGS = [*SMALL_RUN_ARGS, f"--data.synthetic_kwargs={{num_train: 8, num_val: {VAL_IMAGES}, image_size: 64}}"]
DDP = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu"]
DEVICES = 3
SINGLE = ["--trainer.devices=1", "--trainer.strategy=auto"]
#: The distributed evaluation checked against one process: ``vpnext test`` (test_step) with the
#: heaviest protocol, multi-scale + flip where each scaled image is scored by sliding windows of 48 at
#: stride 32. The default protocol (whole image, validation_step) is the fit's own validation.
EVAL_PROTOCOL = [
    "--model.eval_mode=ms_flip",
    "--model.eval_scales=[0.75,1.25]",
    "--model.eval_window=slide",
    "--model.eval_crop=48",
    "--model.eval_stride=32",
]
FULL_SPLIT = {
    "images_evaluated": VAL_IMAGES,
    "images_distinct": VAL_IMAGES,
    "split_size": VAL_IMAGES,
    "partial": False,
    "images_repeated": 0,
}


def run_ddp(args: list[str], devices: int) -> None:
    """``vpnext <args>`` on ``devices`` CPU processes, one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*vpnext_command(), *args, f"--trainer.devices={devices}", *DDP]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]


def coverage(results: dict) -> dict:
    return {key: results[key] for key in FULL_SPLIT}


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-process fit (8 train / 7 val images) whose validation runs ``EVAL_PROTOCOL`` on 3 + 2 + 2
    images: the uneven split, the heaviest protocol and training under DDP in one launch."""
    data, root = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("runs")
    args = ["fit", *ARGS, *EVAL_PROTOCOL, f"--data.root={data}", f"--run.root={root}", "--run.name=ddp"]
    run_ddp(args, devices=DEVICES)
    return only_run_dir(root / "ddp", "_fit")  # every rank wrote into one run directory


@pytest.fixture(scope="module")
def single_process(ddp_fit: Path) -> dict:
    """results.json of one process running ``vpnext test`` on ``last.ckpt`` of the DDP fit (the
    fit's config: ``EVAL_PROTOCOL``; synthetic data tests on its val split)."""
    ckpt = ddp_fit / "checkpoints" / "last.ckpt"
    args = ["test", "--config", str(ddp_fit / "config.yaml"), *SINGLE, "--run.name=single_test"]
    with torch_threads(1):  # like each DDP rank
        assert main([*args, "--ckpt_path", str(ckpt)]) == 0
    return read_json(only_run_dir(ddp_fit.parent.parent / "single_test", "_test") / "results.json")


@pytest.mark.slow
def test_ddp_fit_validates_every_image_once(ddp_fit: Path) -> None:
    distributed = read_json(ddp_fit / "results.json")
    assert distributed["world_size"] == DEVICES
    # 8 training images over 3 ranks: 3 each (the training sampler pads), one batch per epoch.
    assert distributed["optimizer_steps"] == 2 and distributed["images_seen"] == 2 * 3 * DEVICES
    assert coverage(distributed) == FULL_SPLIT

    # The fit's last validation, scored again by one process: the same counts, to the bit.
    ckpt = ddp_fit / "checkpoints" / "last.ckpt"
    with torch_threads(1):  # like each DDP rank
        assert (
            main(["validate", "--config", str(ddp_fit / "config.yaml"), *SINGLE, "--ckpt_path", str(ckpt)])
            == 0
        )
    single = read_json(only_run_dir(ddp_fit.parent, "_validate") / "results.json")
    assert single["world_size"] == 1 and coverage(single) == FULL_SPLIT
    assert single["evaluation"] == distributed["evaluation"]
    assert single["mIoU"] == distributed["mIoU"]
    assert single["per_class_iou"] == distributed["per_class_iou"]


# Three ranks over 7 images (an uneven split: no rank pads) with multi-scale + flip and sliding
# windows. ``vpnext test`` and the fit's validation share one scoring path (``_score_batch`` and
# ``_log_split``), so the distributed figures are checked against one process's ``test``; which rank
# gets which image is covered by the sampler's unit tests (test_data_sampling.py).
@pytest.mark.slow
def test_ddp_evaluation_equals_single_process(ddp_fit: Path, single_process: dict) -> None:
    distributed = read_json(ddp_fit / "results.json")

    assert distributed["world_size"] == DEVICES and distributed["evaluation"] == single_process["evaluation"]
    assert distributed["evaluation"]["mode"] == "ms_flip" and distributed["evaluation"]["window"] == "slide"
    assert coverage(distributed) == coverage(single_process) == FULL_SPLIT
    assert distributed["mIoU"] == single_process["mIoU"]  # exact: integer counts summed over ranks
    assert distributed["per_class_iou"] == single_process["per_class_iou"]


@pytest.mark.slow
def test_partial_evaluation_is_flagged_in_results_and_report(ddp_fit: Path) -> None:
    ckpt = ddp_fit / "checkpoints" / "last.ckpt"
    args = ["validate", "--config", str(ddp_fit / "config.yaml"), *SINGLE, "--ckpt_path", str(ckpt)]
    assert main([*args, "--trainer.limit_val_batches=3", "--run.name=partial"]) == 0
    partial = read_json(only_run_dir(ddp_fit.parent.parent / "partial", "_validate") / "results.json")
    assert coverage(partial) == {**FULL_SPLIT, "images_evaluated": 3, "images_distinct": 3, "partial": True}

    # The partial run evaluated the fit's checkpoint: it is listed under "Evaluations of checkpoints"
    # with its coverage, and the fit keeps its own, full-split Table II row.
    markdown, _ = report.render_report(ddp_fit.parent.parent)
    tables, evaluations = markdown.split("## Evaluations of checkpoints")
    (row,) = [line for line in evaluations.splitlines() if "`partial/" in line]
    assert f"partial: 3/{VAL_IMAGES} images" in row and "| validate |" in row
    (fit_row,) = [line for line in tables.splitlines() if line.endswith("| 70.00 |")]  # HiCLR depth 3
    assert "partial" not in fit_row
