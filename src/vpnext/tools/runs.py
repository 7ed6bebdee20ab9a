"""Finished runs as the report reads them: loading ``results.json`` and ``vpnext flops --json``
files, and which row of the paper's Tables I-III a run belongs to (by its ablation switches, never
by its directory name). :mod:`vpnext.tools.report` renders them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpnext import paper
from vpnext.schema import RESULTS_FILE
from vpnext.tools.evaluations import EVALUATION_STAGES, Evaluation, load_evaluations

__all__ = [
    "FLOPS_DIR",
    "MASK2FORMER_ROW",
    "MOCK_FPN_ROW",
    "SEGMENTER_PYRAMID_ROW",
    "PAPER_GFLOPS",
    "PAPER_MIOU",
    "TABLE1_ROWS",
    "TABLE2_ROWS",
    "TABLE3_ROWS",
    "Run",
    "coverage",
    "incomplete_runs",
    "load_checkpoint_evaluations",
    "load_flops",
    "load_runs",
    "table1_row",
    "table2_row",
    "table3_row",
]

#: Folder under the runs folder that holds the ``vpnext flops --json`` files.
FLOPS_DIR = "flops"


@dataclass(frozen=True)
class Run:
    """The parts of one ``results.json`` the tables need.

    Args:
        path: The ``results.json`` file.
        model: The run's ablation switches (``model`` block).
        miou: mIoU as a fraction, ``None`` if the run never evaluated.
        finished_at: ISO timestamp; the latest run wins a contested row.
        setting: What must agree between runs of one table (dataset, backbone, crop, steps).
        coverage_mark: Short flag after the number when the evaluation did not score every image
            of the split exactly once (``partial: 3/7 images``), else empty.
        coverage_note: The same in words, for the note under the table.
    """

    path: Path
    model: dict[str, Any]
    miou: float | None
    finished_at: str
    setting: tuple[tuple[str, Any], ...]
    coverage_mark: str = ""
    coverage_note: str = ""
    seed: int | None = None
    wall_time_s: float | None = None
    gmacs: float | None = None
    config_key: str = ""
    per_class: tuple[tuple[str, float], ...] = ()
    machine: str | None = None
    #: mIoU of the dataset's val split scored beside held-out groups (``data.val_groups``).
    official_miou: float | None = None

    @property
    def decoder(self) -> str:
        """The decoder configuration (runs from before named configurations had the efficient one)."""
        return str(self.model.get("decoder") or "efficient")


#: Hyperparameters that change how a run computes, not what: left out of a row's configuration.
HOW_NOT_WHAT = frozenset({"compile"})


def load_runs(runs_dir: str | Path, metric: str = "mIoU", split: str = "val") -> list[Run]:
    """All training runs under ``runs_dir`` evaluated on ``split`` (``results.json`` files, any depth).

    ``validate``/``test`` runs are evaluations of a training run's checkpoint, not runs of their
    own: they are left to :func:`load_checkpoint_evaluations`.
    """
    runs = []
    for path in sorted(Path(runs_dir).rglob(RESULTS_FILE)):
        record = _read_record(path)
        if record is None or record.get("split") != split or not isinstance(record.get("model"), dict):
            continue  # unreadable files are counted by incomplete_runs
        if record.get("stage", "fit") in EVALUATION_STAGES:
            continue
        data = record.get("data") or {}
        setting = (
            ("dataset", data.get("dataset")),
            ("backbone", record["model"].get("backbone")),
            ("crop", _size_text(data.get("crop_size"))),
            ("steps", record.get("optimizer_steps")),
            ("val", _val_set(data)),
        )
        mark, note = coverage(record)
        finished = str(record.get("finished_at", ""))
        # Everything that defines the configuration; the seed is deliberately not part of it, nor
        # Lightning's bookkeeping in the hparams (``_instantiator``, saved before commit b8bdb30),
        # nor how the same arithmetic was run (``compile``).
        hparams = {
            k: v
            for k, v in (record.get("hparams") or record["model"]).items()
            if not k.startswith("_") and k not in HOW_NOT_WHAT
        }
        key = json.dumps([hparams, data, setting], sort_keys=True, default=str)
        runs.append(
            Run(
                path,
                record["model"],
                record.get(metric),
                finished,
                setting,
                mark,
                note,
                seed=record.get("seed"),
                wall_time_s=record.get("wall_time_s"),
                gmacs=record.get("inference_gmacs"),
                config_key=key,
                per_class=tuple((record.get("per_class_iou") or {}).items()),
                machine=_machine(record),
                official_miou=(record.get("official_val") or {}).get("mIoU"),
            )
        )
    return runs


def _val_set(data: dict[str, Any]) -> str:
    """What the validation mIoU is over: held-out groups (``groups 0006R0``) or the val split."""
    held = (data.get("groups") or {}).get("val_groups")
    return f"groups {','.join(held)}" if held else "split"


def load_checkpoint_evaluations(runs_dir: str | Path) -> list[Evaluation]:
    """Every ``vpnext validate``/``test`` run under ``runs_dir``."""
    records = []
    for path in sorted(Path(runs_dir).rglob(RESULTS_FILE)):
        record = _read_record(path)
        if record is not None:
            records.append((path, record, coverage(record)[0]))
    return load_evaluations(records)


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _machine(record: dict[str, Any]) -> str | None:
    machine = record.get("machine")
    return f"{machine['device']}, {machine['threads']} threads" if isinstance(machine, dict) else None


def incomplete_runs(runs_dir: str | Path) -> list[Path]:
    """Run folders (holding a ``config.yaml``) without a readable ``results.json``.

    These are runs that were stopped (pre-empted, interrupted), failed, or are still running:
    the CLI writes ``results.json`` last and atomically, only when a run finishes. W&B's own
    ``config.yaml`` copies are not runs.
    """
    root = Path(runs_dir)
    found = []
    for config in sorted(root.rglob("config.yaml")):
        run = config.parent
        if "wandb" in run.relative_to(root).parts:
            continue
        if _read_record(run / RESULTS_FILE) is None:
            found.append(run)
    return found


def coverage(record: dict[str, Any]) -> tuple[str, str]:
    """Flag and note for an evaluation that was partial or repeated images; empty if it was whole.

    Files written before ``results.json`` recorded image counts carry no flag.
    """
    evaluated, distinct = record.get("images_evaluated"), record.get("images_distinct")
    size, split = record.get("split_size"), record.get("split", "")
    marks, notes = [], []
    if record.get("partial"):
        covered = distinct if distinct is not None else evaluated
        marks.append(f"partial: {covered}/{size} images")
        notes.append(f"partial evaluation, {covered} of {size} {split} images")
    if record.get("images_repeated"):
        marks.append(f"{record['images_repeated']} repeated")
        notes.append(f"{evaluated} {split} images scored, only {distinct} of them distinct")
    return "; ".join(marks), "; ".join(notes)


def load_flops(runs_dir: str | Path) -> list[dict[str, Any]]:
    """The ``vpnext flops --json`` files under ``runs_dir/flops``: switches, MACs, image size, path."""
    folder = Path(runs_dir) / FLOPS_DIR
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = json.loads(path.read_text())
        if isinstance(record, dict) and isinstance(record.get("switches"), dict) and "macs" in record:
            records.append({**record, "_path": path})
    return records


# ---- which row a run belongs to ---------------------------------------------------------------
# A row key is (sort key, method, second column); None means "not in this table".
RowKey = tuple[tuple[int, int], str, str]


def _num_aux(model: dict[str, Any]) -> int:
    layers = model.get("aux_layers", 2)
    return len(layers) if isinstance(layers, list) else int(layers)


def _is_bilinear(model: dict[str, Any]) -> bool:
    # VPNeXt treats HiCLR depth 0 as the bilinear path.
    return model.get("upsampler") == "bilinear" or (
        model.get("upsampler") == "hiclr" and model.get("hiclr_depth") == 0
    )


def _is_vcr(model: dict[str, Any]) -> bool:
    """VCR as the paper defines it: context head, replayed context as a fixed prior."""
    return (
        model.get("aux") == "vcr" and model.get("head") == "context" and model.get("replay_stop_grad", True)
    )


def table1_row(model: dict[str, Any]) -> RowKey | None:
    """Table I row: method and number of deep-supervision layers."""
    if not _is_bilinear(model):
        return None
    n = _num_aux(model)
    if model.get("head") == "mask_transformer" and model.get("aux") == "none":
        return (1, 0), "Mask decoder w/o pyramid", "2 (implicit)"  # Segmenter's 2 decoder blocks
    if model.get("head") == "mask2former" and model.get("aux") == "none":
        return MASK2FORMER_ROW
    if model.get("head") == "context" and model.get("aux") == "deep_supervision":
        return (0, n), "Deep supervision", str(n)
    if _is_vcr(model):
        return (2, n), "Our VCR", str(n)
    return None


def table2_row(model: dict[str, Any]) -> RowKey | None:
    """Table II row: upsampler and number of HiCLR layers (VCR with 2 layers in every row)."""
    if not (_is_vcr(model) and _num_aux(model) == 2):
        return None
    if _is_bilinear(model):
        return (0, 0), "Bilinear", "0"
    if model.get("upsampler") == "mock_hiclr":  # the paper's row: HiCLR on a mock 1/4 feature
        depth = int(model["hiclr_depth"])
        return (1, depth), "Mock pyramid", str(depth)
    if model.get("upsampler") == "mock_pyramid":  # deconvolution + FPN, no HiCLR: not the paper's row
        return MOCK_FPN_ROW
    if model.get("upsampler") == "hiclr":
        depth = int(model["hiclr_depth"])
        return (2, depth), "Our real pyramid", str(depth)
    return None


def table3_row(model: dict[str, Any]) -> RowKey | None:
    """Table III row: method and whether it has a pyramid upsampler (inference cost only)."""
    pyramid = not _is_bilinear(model)
    mark = "√" if pyramid else "-"
    if model.get("head") == "mask2former":
        return (1, 1), "Mask decoder", "√"
    if model.get("head") == "mask_transformer":  # Segmenter on the FPN mock pyramid: not the paper's row
        return ((1, 0), "Mask decoder", mark) if not pyramid else SEGMENTER_PYRAMID_ROW
    if model.get("head") != "context":
        return None
    if model.get("aux") == "deep_supervision" and not pyramid:
        return (0, 0), "Deep supervision", mark
    if model.get("aux") == "vcr" and (not pyramid or model.get("upsampler") == "hiclr"):
        return (2, int(pyramid)), "Our VPNeXt", mark
    return None


TABLE1_ROWS: list[RowKey] = [row.key for row in paper.TABLE1]
#: A Table I row the paper does not have (its Table III has it): Mask2Former on ViTDet's pyramid,
#: whose 9 decoder layers are each supervised, as Segmenter's 2 blocks are the implicit 2 above.
MASK2FORMER_ROW: RowKey = ((1, 1), "Mask decoder with pyramid (Mask2Former)", "9 (implicit)")
#: A Table III row the paper does not have: Segmenter on the FPN mock pyramid (``upsampler=mock_pyramid``).
SEGMENTER_PYRAMID_ROW: RowKey = ((1, 2), "Mask decoder (Segmenter) + FPN mock pyramid", "√")
#: A Table II row the paper does not have, shown when runs fill it: the deconvolution + FPN mock
#: pyramid without HiCLR (``upsampler=mock_pyramid``; the report's "Mock pyramid" row before the
#: row followed the paper's definition, HiCLR on a mock 1/4 feature).
MOCK_FPN_ROW: RowKey = ((1, 0), "Mock pyramid (FPN, no HiCLR)", "0")
TABLE2_ROWS: list[RowKey] = [row.key for row in paper.TABLE2]
TABLE3_ROWS: list[RowKey] = [row.key for row in paper.TABLE3]
#: The paper's figures by (method, column): mIoU of Tables I-II, GFLOPs of Table III.
PAPER_MIOU = paper.paper_figures(paper.TABLE1, paper.TABLE2)
PAPER_GFLOPS = paper.paper_figures(paper.TABLE3)


def _size_text(value: Any) -> Any:
    return "x".join(map(str, value)) if isinstance(value, list) else value
