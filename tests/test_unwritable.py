"""An output folder that stops taking writes mid-run: one clear error, the previous checkpoint intact."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.helpers import SMALL_RUN_ARGS
from vpnext.cli import main
from vpnext.run_dir import ANNOUNCEMENT


class BlockWritesAtStep(L.Callback):
    """Test helper: from training step ``step`` on, the run's checkpoint folder takes no more data.

    ``how="full"`` caps the size of any file this process writes at 64 KiB (``RLIMIT_FSIZE``), as a
    full disk would (it works for root too); ``how="readonly"`` removes the folder's write
    permission (only effective for a non-root user).
    """

    def __init__(self, step: int, how: str) -> None:
        self.step = step
        self.how = how

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step != self.step:
            return
        if self.how == "full":
            resource.setrlimit(
                resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1])
            )
        else:
            os.chmod(Path(trainer.default_root_dir) / "checkpoints", 0o555)


@pytest.mark.parametrize("how", ["full", "readonly"])
def test_unwritable_checkpoint_folder_fails_clearly_and_keeps_the_last_checkpoint(
    how: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    if how == "readonly" and os.geteuid() == 0:
        pytest.skip("root ignores folder permissions; the 'full' case covers root")
    init = f"{{step: 2, how: {how}}}"
    block = f"--trainer.callbacks+={{class_path: test_unwritable.BlockWritesAtStep, init_args: {init}}}"
    args = [
        "fit",
        *SMALL_RUN_ARGS,
        "--trainer.max_steps=5",
        "--data.batch_size=2",
        "--run.ckpt_every_n_steps=1",
    ]
    args += [f"--data.root={tmp_path / 'data'}", f"--run.root={tmp_path / 'runs'}", "--run.name=w", block]
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        code = main(args)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        for folder in (tmp_path / "runs").glob("w/*/checkpoints"):
            os.chmod(folder, 0o755)
    (run,) = (tmp_path / "runs" / "w").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    # The run directory (and how to resume) is announced before the error; only errors count here.
    err = capfd.readouterr().err.splitlines()
    lines = [line for line in err if line.startswith("vpnext") and not ANNOUNCEMENT.match(line)]
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(f"vpnext: error: cannot write checkpoint {last}: "), lines
    assert ("File too large" if how == "full" else "Permission denied") in lines[0]
    assert "the previous checkpoint there is kept" in lines[0]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2  # the one before
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no partial file left
    assert not (run / "results.json").exists()
