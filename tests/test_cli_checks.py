"""The command line's input checks as plain functions: a parsed configuration in, one UserError line
out, no Trainer built (vpnext.cli.checks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from jsonargparse import Namespace

from vpnext.cli.checks import check_inputs, fold_root_dir, model_flags, suggest_flag, tuples_as_lists
from vpnext.errors import UserError
from vpnext.run_dir import RunOptions


def _config(tmp_path: Path, **changes: object) -> Namespace:
    """A valid parsed ``fit`` configuration; ``changes`` are ``section.name`` -> value."""
    config = Namespace(
        ckpt_path=None,
        init=Namespace(weights=None, strict=True),
        run=Namespace(root=RunOptions.root),
        model=Namespace(
            backbone="vit_tiny_patch16_224", pretrained=False, lr=1e-3, weight_decay=0.05, warmup_iters=0
        ),
        data=Namespace(
            dataset="synthetic", root=None, predict_dir=None, batch_size=2, val_batch_size=1, num_workers=0
        ),
        trainer=Namespace(max_epochs=-1, default_root_dir=None),
    )
    for key, value in changes.items():
        config[key] = value.format(tmp=tmp_path) if isinstance(value, str) else value
    return config


def test_a_valid_configuration_passes(tmp_path: Path) -> None:
    check_inputs(_config(tmp_path))


BAD = {
    "missing checkpoint": ({"ckpt_path": "{tmp}/none.ckpt"}, "ckpt_path: checkpoint file not found: "),
    "missing backbone weights": (
        {"model.pretrained": "{tmp}/vit.pth"},
        "model.pretrained: backbone weights file not found",
    ),
    "missing init weights": ({"init.weights": "{tmp}/w.pt"}, "init.weights: weights file not found"),
    "unknown dataset": ({"data.dataset": "kitti"}, "data.dataset: unknown dataset 'kitti'; known: ade20k"),
    "missing dataset root": (
        {"data.dataset": "camvid", "data.root": "{tmp}/camvid"},
        "data.root: dataset root of 'camvid' not found",
    ),
    "missing predict folder": (
        {"data.predict_dir": "{tmp}/images"},
        "data.predict_dir: folder of images to predict not found",
    ),
    "batch size 0": ({"data.batch_size": 0}, "data.batch_size: must be >= 1, got 0"),
    "negative workers": ({"data.num_workers": -1}, "data.num_workers: must be >= 0, got -1"),
    "learning rate 0": ({"model.lr": 0.0}, "model.lr: must be > 0.0, got 0.0"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_one_user_error(case: str, tmp_path: Path) -> None:
    changes, message = BAD[case]
    with pytest.raises(UserError) as info:
        check_inputs(_config(tmp_path, **changes))
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_a_plain_state_dict_is_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(2)}, tmp_path / "w.pt")
    with pytest.raises(UserError, match=r"not a checkpoint: .*w\.pt \(no Lightning state_dict"):
        check_inputs(_config(tmp_path, ckpt_path=str(tmp_path / "w.pt")))


def test_default_root_dir_names_the_runs_folder(tmp_path: Path) -> None:
    config = _config(tmp_path, **{"trainer.default_root_dir": str(tmp_path / "runs")})
    fold_root_dir(config)
    assert config.run.root == str(tmp_path / "runs") and config.trainer.default_root_dir is None
    clash = _config(
        tmp_path, **{"trainer.default_root_dir": str(tmp_path / "a"), "run.root": str(tmp_path / "b")}
    )
    with pytest.raises(UserError, match="give one"):
        fold_root_dir(clash)


def test_flag_helpers() -> None:
    words = ["fit", "--model.aux=vcr", "--model.aux", "--data.root=x", "--model.hiclr_depth=2"]
    assert model_flags(words) == [("--model.aux", "aux"), ("--model.hiclr_depth", "hiclr_depth")]
    assert suggest_flag("--model.hiclr_deph", ["--model.hiclr_depth", "--data.root"]) == (
        " (did you mean --model.hiclr_depth?)"
    )
    assert tuples_as_lists((1, 2)) == [1, 2] and tuples_as_lists("a") == "a"
