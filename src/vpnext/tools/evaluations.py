"""Evaluations of checkpoints (``vpnext validate``/``test`` runs) for ``vpnext report``.

A ``validate`` or ``test`` run writes its own ``results.json`` (``stage`` ``validate``/``test``)
in its own folder. It scores a checkpoint of a training run, so it is not a training run itself:
the report's tables count each ``fit`` once, and every evaluation is listed under
"Evaluations of checkpoints" next to the training run it evaluated (the run folder that holds
the checkpoint), or marked as evaluating a checkpoint from outside the reported folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EVALUATION_STAGES", "Evaluation", "evaluations_section", "load_evaluations", "owner"]

#: ``results.json`` stages that evaluate a checkpoint instead of training one.
EVALUATION_STAGES = ("validate", "test")


@dataclass(frozen=True)
class Evaluation:
    """One ``validate``/``test`` run.

    Args:
        path: Its ``results.json``.
        stage: ``validate`` or ``test``.
        split: The split scored (``val``, ``test``).
        miou: mIoU as a fraction (``None`` if the run recorded none).
        checkpoint: The checkpoint evaluated, as recorded.
        step: Optimiser step of the evaluated weights (``evaluated_at_step``).
        coverage_mark: ``partial: 3/7 images`` and the like, else empty.
    """

    path: Path
    stage: str
    split: str
    miou: float | None
    checkpoint: str | None
    step: int | None
    coverage_mark: str = ""


def load_evaluations(records: Sequence[tuple[Path, dict[str, Any], str]]) -> list[Evaluation]:
    """Evaluations among ``(results.json path, record, coverage mark)`` triples."""
    found = []
    for path, record, mark in records:
        if record.get("stage") not in EVALUATION_STAGES:
            continue
        checkpoint = (record.get("checkpoint") or {}).get("evaluated")
        found.append(
            Evaluation(
                path,
                str(record["stage"]),
                str(record.get("split", "")),
                record.get("mIoU"),
                None if checkpoint is None else str(checkpoint),
                record.get("evaluated_at_step"),
                mark,
            )
        )
    return found


def owner(evaluation: Evaluation, training_runs: Sequence[Path]) -> Path | None:
    """The training run folder (among ``training_runs``) holding the evaluated checkpoint.

    Matched by resolved path, else by the last two folder names (``<experiment>/<run>``), so that
    a runs folder copied from another machine still pairs its evaluations with its runs.
    """
    if evaluation.checkpoint is None:
        return None
    run = Path(evaluation.checkpoint).parent.parent  # <run>/checkpoints/<name>.ckpt
    for candidate in training_runs:
        if candidate.resolve() == run.resolve():
            return candidate
    tail = run.parts[-2:]
    matches = [c for c in training_runs if c.parts[-2:] == tail]
    return matches[0] if len(matches) == 1 else None


def evaluations_section(evaluations: Sequence[Evaluation], training_runs: Sequence[Path], root: Path) -> str:
    """Markdown: one row per evaluation, with the training run it evaluated."""
    if not evaluations:
        return ""
    rows = []
    for item in evaluations:
        run = owner(item, training_runs)
        evaluated = f"`{run.relative_to(root)}`" if run is not None else "not under this folder"
        checkpoint = Path(item.checkpoint).name if item.checkpoint else "–"
        score = "–" if item.miou is None else f"{100 * item.miou:.2f}"
        if item.coverage_mark:
            score += f" ({item.coverage_mark})"
        step = "–" if item.step is None else str(item.step)
        folder = f"`{item.path.parent.relative_to(root)}`"
        rows.append([evaluated, checkpoint, step, item.stage, item.split, score, folder])
    header = ["training run", "checkpoint", "step", "command", "split", "mIoU(%)", "evaluation run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in sorted(rows)]
    note = (
        "Each `vpnext validate`/`test` run scored a checkpoint of the training run named in the first "
        "column; the tables above count training runs only."
    )
    return "\n".join(["## Evaluations of checkpoints", "", *lines, "", note])
