"""``metrics.csv`` across a resume: the rows logged before the checkpoint are kept."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

__all__ = ["ResumedCSVLog", "read_csv_rows"]


class ResumedCSVLog(Callback):
    """Keeps ``metrics.csv`` of a resumed run whole: the rows before the checkpoint, then the new ones.

    Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts. The CLI reads the
    file before that (:func:`read_csv_rows`); this callback writes the rows logged before the
    checkpoint's step back once the logger has started, and the logger appends to them.

    Args:
        rows: ``(header, rows)`` of the old ``metrics.csv``.
        step: Global step of the checkpoint; rows logged at or after it are dropped (the resumed
            run logs those steps again).
    """

    def __init__(self, rows: tuple[list[str], list[dict[str, str]]], step: int) -> None:
        self.header, self.rows = rows
        self.step = step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.loggers import CSVLogger

        if not trainer.is_global_zero or not self.header:
            return
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                writer = logger.experiment  # starting it removes the old file
                kept = [row for row in self.rows if _step_of(row) < self.step]
                with open(writer.metrics_file_path, "w", newline="") as handle:
                    out = csv.DictWriter(handle, fieldnames=self.header)
                    out.writeheader()
                    out.writerows(kept)
                writer.metrics_keys = list(self.header)
                return


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file (empty if it does not exist)."""
    if not path.is_file():
        return [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _step_of(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "inf")
    except ValueError:
        return float("inf")
