"""A NaN or infinite loss stops the fit at its step, names the term, and keeps the last checkpoint."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from tests.helpers import SMALL_RUN_ARGS
from vpnext.checkpoint_io import NonFiniteWeightsError
from vpnext.cli import main
from vpnext.run_dir import ANNOUNCEMENT
from vpnext.training.checkpoints import SafeCheckpointIO


class PoisonAtStep(L.Callback):
    """Test helper: at training step ``step`` make one loss term non-finite.

    ``target="aux"`` fills the first auxiliary classifier's parameters with NaN (only the
    auxiliary losses see it); ``target="image"`` fills the batch's images with inf (every term).
    """

    def __init__(self, step: int, target: str) -> None:
        self.step = step
        self.target = target

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step != self.step:
            return
        if self.target == "image":
            batch["image"].fill_(float("inf"))
            return
        name, param = next((n, p) for n, p in pl_module.named_parameters() if n.startswith("model.aux."))
        with torch.no_grad():
            param.fill_(float("nan"))


@pytest.mark.parametrize(
    ("target", "named", "finite"),
    [("aux", "train/loss_aux_", "train/loss_main"), ("image", "train/loss_main", None)],
)
def test_non_finite_loss_stops_at_its_step_and_keeps_the_checkpoint(
    target: str, named: str, finite: str | None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    init = f"{{step: 2, target: {target}}}"
    poison = f"--trainer.callbacks+={{class_path: test_nonfinite.PoisonAtStep, init_args: {init}}}"
    args = [
        "fit",
        *SMALL_RUN_ARGS,
        "--trainer.max_steps=5",
        "--data.batch_size=2",
        "--run.ckpt_every_n_steps=1",
    ]
    args += [f"--data.root={tmp_path / 'data'}", f"--run.root={tmp_path}", "--run.name=nan", poison]
    assert main(args) == 1
    # The run directory (and how to resume) is announced before the error; only errors count here.
    err = capfd.readouterr().err.splitlines()
    lines = [line for line in err if line.startswith("vpnext") and not ANNOUNCEMENT.match(line)]
    (run,) = (tmp_path / "nan").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    assert len(lines) == 1 and lines[0].startswith("vpnext: error: non-finite loss at step 2: "), lines
    assert f"{named}" in lines[0].split(";")[0] and f"last checkpoint kept: {last}" in lines[0]
    if finite:
        assert finite in lines[0].split("(finite: ")[1].split(")")[0]
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2  # the step before the bad one, written by the interval
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    assert not (run / "results.json").exists()


def test_non_finite_weights_are_never_written(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, target)
    with pytest.raises(
        NonFiniteWeightsError, match=r"weight w is not finite; the previous checkpoint is kept"
    ):
        SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}}, target)
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(2))
