"""One-line errors: the base class, its rendering, and errors re-raised from DataLoader workers."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vpnext.checkpoint_io import (
    CheckpointWriteError,
    CorruptCheckpointError,
    NonFiniteLossError,
    NonFiniteWeightsError,
    UnsafeCheckpointError,
)
from vpnext.cli import main
from vpnext.data import DatasetError
from vpnext.errors import OneLineError, UserError, describe, original_message
from vpnext.models import PretrainedWeightsError


class _Broken(Dataset):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        raise self.error


def _first_error(loader: DataLoader) -> Exception:
    """The error of the loader's first batch. The iterator is released here, so that its workers
    stop now and not when a later test's garbage collection finds it (seconds of waiting)."""
    iterator = iter(loader)
    try:
        next(iterator)
    except Exception as err:  # noqa: BLE001 - returned for the test to check
        err.__traceback__ = None  # the traceback's frames hold the iterator
        return err
    finally:
        del iterator
    raise AssertionError("the loader raised nothing")


@pytest.mark.parametrize(
    "error_type",
    [
        DatasetError,
        UserError,
        PretrainedWeightsError,
        UnsafeCheckpointError,
        CheckpointWriteError,
        CorruptCheckpointError,
        NonFiniteLossError,
        NonFiniteWeightsError,
    ],
)
def test_user_facing_errors_are_one_line_errors(error_type: type) -> None:
    err = error_type("data/x.png: label holds value 40 (3 classes)")
    assert isinstance(err, OneLineError)
    assert describe(err) == "data/x.png: label holds value 40 (3 classes)"


def test_other_errors_keep_their_class_name() -> None:
    assert (
        describe(RuntimeError("shape   mismatch\n at layer 3")) == "RuntimeError: shape mismatch at layer 3"
    )
    assert describe(KeyError("x")) == "KeyError: 'x'"
    assert describe(FileNotFoundError("a.ckpt: not found")) == "a.ckpt: not found"


def test_dataset_error_is_still_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError) and issubclass(PretrainedWeightsError, RuntimeError)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_error_from_a_loader_worker_keeps_its_message(workers: int) -> None:
    message = "data/val/x.png: label holds value 40, above the 11 classes"
    error = _first_error(DataLoader(_Broken(DatasetError(message)), num_workers=workers, batch_size=1))
    assert isinstance(error, DatasetError)
    assert str(error) == message and describe(error) == message
    if workers:
        assert "Original Traceback" in error.worker_traceback
        assert "in DataLoader worker process" in error.worker_traceback
    else:
        assert error.worker_traceback is None


def test_corrupt_checkpoint_reason_from_a_worker() -> None:
    error = _first_error(
        DataLoader(_Broken(CorruptCheckpointError("w.pt: truncated", "truncated")), num_workers=1)
    )
    assert isinstance(error, CorruptCheckpointError)
    assert str(error) == "w.pt: truncated" and error.reason == "w.pt: truncated"


def test_original_message_of_a_chained_multiline_error() -> None:
    text = (
        "Caught DatasetError in DataLoader worker process 3.\n"
        "Original Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "OSError: truncated\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n"
        '  File "y.py", line 2, in g\n'
        "vpnext.data.errors.DatasetError: a.png: cannot decode\nsecond line\n"
    )
    assert original_message(text, "DatasetError") == "a.png: cannot decode\nsecond line"
    assert original_message("a.png: DatasetError: x", "DatasetError") is None  # not a re-raise


def _folder_with_bad_val_label(root: Path) -> Path:
    """A 3-class folder dataset (48x48) whose second val label holds the value 40."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for name in ("a", "b", "c", "d"):
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(
                root / "images" / split / f"{name}.png"
            )
            label = rng.integers(0, 3, (48, 48), dtype=np.uint8)
            if split == "val" and name == "b":
                label[5, 5] = 40
            Image.fromarray(label).save(root / "annotations" / split / f"{name}.png")
        (root / f"{split}.txt").write_text("a\nb\nc\nd\n")
    (root / "meta.json").write_text(json.dumps({"classes": ["bg", "x", "y"]}))
    return root


def test_validate_with_loader_workers_prints_one_line(tmp_path: Path) -> None:
    data = _folder_with_bad_val_label(tmp_path / "data")
    args = [
        "validate",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--model.decoder_dim=16",
        "--model.pyramid_dim=8",
        "--model.num_heads=2",
        "--data.dataset=folder",
        f"--data.root={data}",
        "--data.crop_size=32",
        "--data.test_scale=[48, 48]",
        "--data.batch_size=2",
        "--data.num_workers=2",
        f"--run.dir={tmp_path / 'run'}",
    ]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    errors = [line for line in err.getvalue().splitlines() if line.startswith("vpnext: error:")]
    assert code == 1 and len(errors) == 1, err.getvalue()
    (line,) = errors
    assert str(data / "annotations" / "val" / "b.png") in line and "40" in line, line
    assert "Original Traceback" not in line and "worker" not in line and len(line) < 400, line
