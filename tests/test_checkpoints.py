"""Checkpoint and weights files: nothing in them runs, kills never truncate them, mismatches are named."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.helpers import SMALL_RUN_ARGS, TINY
from vpnext.checkpoint_io import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    atomic_torch_save,
    load_weights,
    safe_load,
)
from vpnext.cli import main
from vpnext.training import SegmentationModule
from vpnext.training.checkpoints import SafeCheckpointIO


class Payload:
    """Pickles as "open(marker, 'w')": unpickling it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.marker), "w"))


def _malicious(path: Path, marker: Path, base: dict | None = None) -> Path:
    checkpoint = dict(base or {"state_dict": {"model.w": torch.zeros(1)}})
    checkpoint["hyper_parameters"] = {**checkpoint.get("hyper_parameters", {}), "note": Payload(marker)}
    torch.save(checkpoint, path)
    return path


def _one_error_line(capfd: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vpnext: error:"), lines
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real one-step fit: its last.ckpt and data folder."""
    root, data = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("data")
    args = ["fit", *SMALL_RUN_ARGS, "--trainer.max_steps=1", f"--data.root={data}", f"--run.root={root}"]
    assert main([*args, "--run.name=src"]) == 0
    (ckpt,) = root.glob("src/*/checkpoints/last.ckpt")
    return ckpt, data


@pytest.mark.parametrize(
    "entry",
    ["fit --ckpt_path", "validate --ckpt_path", "fit --model.pretrained", "fit --init.weights"],
)
def test_pickled_payload_is_refused_and_never_runs(
    entry: str, trained: tuple[Path, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ckpt, data = trained
    marker = tmp_path / "executed"
    base = torch.load(ckpt, map_location="cpu", weights_only=True)  # a real checkpoint plus a payload
    evil = _malicious(tmp_path / "evil.ckpt", marker, base)
    subcommand, option = entry.split()
    runs = tmp_path / "runs"
    code = main([subcommand, *SMALL_RUN_ARGS, f"--data.root={data}", f"--run.root={runs}", option, str(evil)])
    line = _one_error_line(capfd)
    assert code == 1
    assert f"{evil}: refused: the file carries a pickled Python object" in line and "open" in line
    assert not marker.exists()  # nothing in the file ran
    assert not runs.exists() or not any(runs.rglob("*.*"))  # no run output left behind


def test_lightning_resume_path_loads_weights_only(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    evil = _malicious(tmp_path / "evil.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        SafeCheckpointIO().load_checkpoint(evil)
    assert not marker.exists()


class RecordCheckpointIO(L.Callback):
    """Test helper: remembers the checkpoint plugin of the trainer the CLI built."""

    seen: list[type] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        RecordCheckpointIO.seen.append(type(trainer.strategy.checkpoint_io))


def test_cli_trainer_uses_the_safe_checkpoint_plugin(trained: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, data = trained
    RecordCheckpointIO.seen.clear()
    callback = "--trainer.callbacks+=test_checkpoints.RecordCheckpointIO"
    args = ["validate", *SMALL_RUN_ARGS, f"--data.root={data}", f"--run.root={tmp_path}", callback]
    assert main([*args, "--ckpt_path", str(ckpt)]) == 0
    assert RecordCheckpointIO.seen == [SafeCheckpointIO]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "half"])
def test_corrupt_checkpoint_is_one_line(
    content: bytes | str, trained: tuple[Path, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ckpt, data = trained
    bad = tmp_path / "bad.ckpt"
    whole = ckpt.read_bytes()
    bad.write_bytes(whole[: len(whole) // 2] if content == "half" else content)
    with pytest.raises(CorruptCheckpointError):
        safe_load(bad)
    args = ["validate", *SMALL_RUN_ARGS, f"--data.root={data}", f"--run.root={tmp_path / 'runs'}"]
    assert main([*args, "--ckpt_path", str(bad)]) == 1
    assert f"not a checkpoint: {bad} (" in _one_error_line(capfd)


def test_kill_during_a_checkpoint_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(3)}, target)
    script = (
        "import os, sys, time, torch\n"
        "from pathlib import Path\n"
        "from vpnext.checkpoint_io import atomic_torch_save\n"
        "def slow_sync(fd):\n"  # the new file is written but not yet in place
        "    print('writing', flush=True); time.sleep(120)\n"
        "os.fsync = slow_sync\n"
        "atomic_torch_save({'step': 2, 'w': torch.zeros(10**6)}, Path(sys.argv[1]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"  # killed in the middle of the write
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert torch.load(target, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"] or all(
        p.name.startswith(".last.ckpt.") for p in tmp_path.iterdir() if p != target
    )


def test_a_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, target)

    def failing_save(obj, f, *a, **k):  # noqa: ANN001, ANN202
        f.write(b"PK partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        atomic_torch_save({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def _tiny(num_classes: int) -> SegmentationModule:
    return SegmentationModule(num_classes=num_classes, **TINY)


def test_weights_for_another_class_count_are_listed_or_loaded_non_strictly(tmp_path: Path) -> None:
    source = _tiny(9)
    path = tmp_path / "nine.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    target = _tiny(6)
    with pytest.raises(ValueError, match=r"other shapes \(file vs model\): model\.\S+ \[9, \d+") as err:
        load_weights(target, path, strict=True)
    assert "\n" not in str(err.value)

    before = {k: v.clone() for k, v in target.state_dict().items()}
    summary = load_weights(target, path, strict=False)
    after, given = target.state_dict(), source.state_dict()
    changed_shape = [k for k in after if given[k].shape != after[k].shape]
    assert changed_shape and all(torch.equal(after[k], before[k]) for k in changed_shape)  # kept
    assert all(torch.equal(after[k], given[k]) for k in after if k not in changed_shape)  # loaded
    assert f"loaded {len(after) - len(changed_shape)} of {len(after)} tensors" in summary

    bare = tmp_path / "bare.pt"  # a VPNeXt state dict (no "model." prefix) also fits
    torch.save(_tiny(6).model.state_dict(), bare)
    assert load_weights(_tiny(6), bare, strict=True).startswith(f"loaded {len(after)} of {len(after)}")


def test_ckpt_from_another_architecture_names_the_keys(
    trained: tuple[Path, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ckpt, data = trained
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    dropped = next(k for k in state["state_dict"] if "head" in k)
    del state["state_dict"][dropped]
    other = tmp_path / "other.ckpt"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    other.write_bytes(buffer.getvalue())
    args = ["validate", *SMALL_RUN_ARGS, f"--data.root={data}", f"--run.root={tmp_path / 'runs'}"]
    assert main([*args, "--ckpt_path", str(other)]) == 1
    line = _one_error_line(capfd)
    assert f"ckpt_path: {other} does not fit the model: 1 missing from the file: {dropped}" in line
    assert f"--init.weights {other} --init.strict false" in line


def test_init_weights_strict_refuses_and_non_strict_fine_tunes(
    trained: tuple[Path, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ckpt, data = trained
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    classifier = [k for k, v in state.items() if v.ndim >= 1 and v.shape[0] == 6 and "head" in k]
    assert classifier
    for key in classifier:  # the same network for a 9-class dataset
        state[key] = torch.zeros((9, *state[key].shape[1:]))
    nine = tmp_path / "nine.ckpt"
    torch.save({"state_dict": state}, nine)
    args = ["fit", *SMALL_RUN_ARGS, "--trainer.max_steps=1", f"--data.root={data}", f"--run.root={tmp_path}"]
    assert main([*args, "--init.weights", str(nine)]) == 1
    line = _one_error_line(capfd)
    assert f"init.weights: {nine} does not fit the model" in line and f"{classifier[0]} [9" in line
    assert "--init.strict false" in line
    assert main([*args, "--init.weights", str(nine), "--init.strict=false"]) == 0
    assert f"vpnext: init.weights: loaded {len(state) - len(classifier)} of " in capfd.readouterr().err
