"""Progress displays: a bar on a terminal, plain lines in a log, and a correct step/epoch count."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import SMALL_RUN_ARGS
from vpnext.cli import main
from vpnext.training.progress import LineProgress, StepProgressBar, position, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_a_log_gets_lines() -> None:
    assert isinstance(progress_bar(stream=Terminal()), StepProgressBar)
    lines = progress_bar(12.0, stream=io.StringIO())
    assert isinstance(lines, LineProgress) and lines.every_s == 12.0


@pytest.mark.parametrize(
    ("max_steps", "max_epochs", "total", "expected"),
    [
        (200, -1, 200, "step 40/200 | epoch 3"),  # Lightning's bar: "Epoch 3/-2"
        (200, None, 200, "step 40/200 | epoch 3"),
        (-1, 10, 500, "step 40/500 | epoch 3/9"),  # epochs bound the run: index/last, as Lightning
        (200, 10, 200, "step 40/200 | epoch 3"),  # max_steps decides
        (-1, -1, math.inf, "step 40 | epoch 3"),  # unbounded: no total
    ],
)
def test_position_counts_steps_of_the_run_and_the_epoch(
    max_steps: int, max_epochs: int | None, total: float, expected: str
) -> None:
    trainer = SimpleNamespace(
        global_step=40,
        current_epoch=3,
        max_steps=max_steps,
        max_epochs=max_epochs,
        estimated_stepping_batches=total,
    )
    assert position(trainer) == expected


def test_terminal_bar_names_step_and_epoch_without_a_negative_total(tmp_path: Path) -> None:
    screen = Terminal()
    args = ["fit", *SMALL_RUN_ARGS, "--trainer.enable_progress_bar=true", "--trainer.max_epochs=-1"]
    with contextlib.redirect_stdout(screen), contextlib.redirect_stderr(io.StringIO()):
        assert main([*args, f"--data.root={tmp_path / 'data'}", f"--run.root={tmp_path / 'runs'}"]) == 0
    drawn = screen.getvalue()
    assert "step 2/2 | epoch 0" in drawn and "/-2" not in drawn
