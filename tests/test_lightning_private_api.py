"""The private parts of Lightning that vpnext relies on still exist and are still used by Lightning.

``pyproject.toml`` accepts the Lightning minor version CI tests; when a new one changes any of these,
this file names what changed (each case fails with the name of the hook), before a run misbehaves.
"""

from __future__ import annotations

import inspect

import lightning
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from vpnext.cli.lightning import VPNeXtCLI
from vpnext.training.checkpoints import LastCheckpoint

CLI_SOURCE = inspect.getsource(LightningCLI)


@pytest.mark.parametrize(
    ("hook", "parameters"),
    [("_parse_ckpt_path", ["self"]), ("_instantiate_trainer", ["self", "config", "callbacks"])],
)
def test_cli_hooks_we_override_exist_and_are_called(hook: str, parameters: list[str]) -> None:
    original = getattr(LightningCLI, hook, None)
    assert original is not None, f"Lightning {lightning.__version__} has no LightningCLI.{hook}"
    assert list(inspect.signature(original).parameters) == parameters, f"LightningCLI.{hook} changed"
    assert f"self.{hook}(" in CLI_SOURCE, f"LightningCLI no longer calls {hook}: our override is ignored"
    assert getattr(VPNeXtCLI, hook) is not original  # ours overrides it


def test_cli_keeps_the_subcommand_parsers() -> None:
    assert "self._subcommand_parsers" in CLI_SOURCE, "LightningCLI._subcommand_parsers is gone"


def test_model_checkpoint_internals_last_checkpoint_uses(tmp_path) -> None:
    last = LastCheckpoint(str(tmp_path))
    for name in ("_last_global_step_saved", "_last_checkpoint_saved"):
        assert hasattr(last, name), f"ModelCheckpoint.{name} is gone"
    skip = getattr(ModelCheckpoint, "_should_skip_saving_checkpoint", None)
    assert skip is not None and list(inspect.signature(skip).parameters) == ["self", "trainer"]


def test_fit_loop_batch_progress_path() -> None:
    from lightning.pytorch.loops.progress import _BatchProgress

    assert hasattr(_BatchProgress().current, "ready"), "batch_progress.current.ready is gone"
