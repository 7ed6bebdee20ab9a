"""Run outputs other tools read: ``results.json`` and predicted label maps.

``results.json`` is the one file the report, benchmark and sweep tools parse; its schema is
documented in ``docs/training.md`` and versioned by ``schema_version``. It is rewritten at the end
of every ``fit``, ``validate`` and ``test`` by global rank 0, atomically (temporary file + rename),
so a reader never sees half a file.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import re
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from PIL import Image

import vpnext
from vpnext.files import atomic_write_json
from vpnext.inference.pictures import save_palette_png
from vpnext.plain import jsonable
from vpnext.schema import COVERAGE_KEYS, RESULTS_FILE, SCHEMA_VERSION
from vpnext.training.checkpoints import LastCheckpoint

__all__ = [
    "COVERAGE_KEYS",
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "PredictionWriter",
    "ResultsWriter",
    "code_version",
    "device_name",
    "library_versions",
    "read_results",
]


def device_name(device: torch.device) -> str:
    """The GPU's or CPU's model name (``/proc/cpuinfo`` on Linux), to label timings with."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        match = None
    return match.group(1).strip() if match else platform.processor() or platform.machine()


#: The libraries whose versions a result records, by the name their module is imported as: vpnext,
#: torch and Lightning, and those that change a run's numbers besides them: the backbone (timm), image
#: ops (torchvision), the augmentation pipeline (albumentations on OpenCV and NumPy) and image
#: decoding (Pillow).
VERSIONED_LIBRARIES = {
    "vpnext": "vpnext",
    "torch": "torch",
    "lightning": "lightning",
    "timm": "timm",
    "torchvision": "torchvision",
    "albumentations": "albumentations",
    "opencv": "cv2",
    "numpy": "numpy",
    "pillow": "PIL",
}


def library_versions() -> dict[str, str | None]:
    """The version of each of :data:`VERSIONED_LIBRARIES` (``None`` where one is missing): a fresh
    install may resolve newer ones, and a "same seed" run with them need not give the same numbers."""
    versions: dict[str, str | None] = {}
    for label, module in VERSIONED_LIBRARIES.items():
        try:
            versions[label] = str(importlib.import_module(module).__version__)
        except (ImportError, AttributeError):
            versions[label] = None
    return versions


def code_version() -> dict[str, Any] | None:
    """The git commit of the vpnext source tree and whether it had uncommitted changes.

    ``None`` when the package is not in a git checkout (an installed wheel) or git is missing.
    """
    source = Path(vpnext.__file__).resolve().parent
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=source, capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()

        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "."))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


class ResultsWriter(Callback):
    """Writes ``<dirpath>/results.json`` when a fit, validate or test run ends.

    It also counts the training images the run has consumed (saved in checkpoints, so a resumed
    run keeps counting). Each rank counts its own batches; the total assumes every rank sees the
    same number of images per step, which Lightning's ``DistributedSampler`` guarantees.

    Args:
        dirpath: Folder of ``results.json``; ``None`` uses ``trainer.default_root_dir`` (the run
            directory under the ``vpnext`` CLI).
        config_path: Path of the saved run configuration, recorded as is.
        experiment: Experiment name, recorded as is.
    """

    def __init__(
        self, dirpath: str | None = None, config_path: str | None = None, experiment: str | None = None
    ) -> None:
        self.dirpath = dirpath
        self.config_path = config_path
        self.experiment = experiment
        self.images_seen = 0
        self._started: dict[str, float] = {}
        #: The code of this run, read when it starts (commits made while it runs must not count).
        self._code: dict[str, Any] | None = None
        self._code_read = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._code_read:
            self._code, self._code_read = code_version(), True

    # ---- bookkeeping ----------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        images = batch["image"] if isinstance(batch, dict) else batch[0]
        self.images_seen += int(images.shape[0]) * trainer.world_size

    def state_dict(self) -> dict[str, Any]:
        return {"images_seen": self.images_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images_seen = int(state_dict.get("images_seen", 0))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started["fit"] = time.time()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._started["validate"] = time.time()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started["test"] = time.time()

    # ---- writing --------------------------------------------------------------------------------
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer, pl_module, "fit", "val")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self.write(trainer, pl_module, "validate", "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer, pl_module, "test", "test")

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, split: str) -> Path | None:
        """Assemble and write the results of ``stage`` (global rank 0 only).

        Returns:
            The path written, or ``None`` on other ranks.
        """
        started = self._started.pop(stage, None)
        if not trainer.is_global_zero:
            return None
        evaluation = getattr(pl_module, "evaluation_results", {}).get(split)
        datamodule = getattr(trainer, "datamodule", None)
        num_params = sum(p.numel() for p in pl_module.parameters())
        record: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "stage": stage,
            "split": split,
            "experiment": self.experiment,
            "run_dir": str(self._dir(trainer)),
            "config_path": self.config_path,
            "mIoU": None if evaluation is None else _finite(evaluation["mIoU"]),
            "per_class_iou": None if evaluation is None else evaluation["per_class_iou"],
            "evaluated_at_step": None if evaluation is None else evaluation["step"],
            # Rows: ground-truth class, columns: predicted class, pixel counts (class-name order).
            "confusion_matrix": None if evaluation is None else evaluation.get("confusion_matrix"),
            # Coverage of that evaluation: each image once means evaluated == distinct == split_size.
            **{key: None if evaluation is None else evaluation.get(key) for key in COVERAGE_KEYS},
            # The val split scored beside held-out groups (data.val_groups), else null.
            "official_val": _other_evaluation(pl_module, "official_val") if split == "val" else None,
            "best_mIoU": None,
            "model": jsonable(getattr(pl_module, "model_hparams", {})),
            # The 0-based blocks the auxiliary branches supervise (``aux_layers`` may be a count).
            "aux_block_indices": list(getattr(getattr(pl_module, "model", None), "aux_layers", [])),
            "hparams": jsonable(dict(pl_module.hparams)),
            "evaluation": _eval_protocol(pl_module),
            "data": {
                "dataset": getattr(datamodule, "dataset_name", None),
                "num_classes": getattr(datamodule, "num_classes", None),
                "crop_size": jsonable(getattr(datamodule, "crop_size", None)),
                # Frames per group (video, city) of each set: which were trained on and scored.
                "groups": _group_summary(datamodule),
            },
            "num_params": num_params,
            "num_trainable_params": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
            "optimizer_steps": int(trainer.global_step),
            "images_seen": self.images_seen,
            "world_size": trainer.world_size,
            "precision": str(trainer.precision),
            "wall_time_s": None if started is None else round(time.time() - started, 3),
            # Runs that differ only in this seed are one configuration in `vpnext report`.
            "seed": _seed(),
            "inference_gmacs": _inference_gmacs(pl_module, getattr(datamodule, "crop_size", None)),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "checkpoint": {"evaluated": _ckpt_path(trainer, stage), "best": None, "last": None},
            # What the wall time was measured on: timings are only comparable on one machine.
            # CPU numerics also depend on the SIMD level ATen's kernels dispatch to (AVX512, AVX2, ...).
            "machine": {
                "device": device_name(pl_module.device),
                "threads": torch.get_num_threads(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            },
            # The code that made the result: "same seed" runs of two commits, or of one commit with
            # other library versions, may differ.
            "code": self._code if self._code_read else code_version(),
            "versions": library_versions(),
        }
        # A validate/test run restores the fit's checkpoint callbacks: their paths are not this run's.
        for callback in trainer.checkpoint_callbacks if stage == "fit" else []:
            if isinstance(callback, LastCheckpoint):
                last = Path(str(callback.dirpath)) / "last.ckpt"
                record["checkpoint"]["last"] = str(last) if last.is_file() else None
            elif isinstance(callback, ModelCheckpoint) and callback.monitor and callback.best_model_path:
                record["checkpoint"]["best"] = callback.best_model_path
                score = callback.best_model_score
                record["best_mIoU"] = None if score is None else _finite(float(score))
        path = self._dir(trainer) / RESULTS_FILE
        atomic_write_json(path, record)
        if stage in ("validate", "test") and record["confusion_matrix"] is not None:
            from vpnext.training.val_pictures import save_confusion_matrix

            names = list((record["per_class_iou"] or {}).keys())
            picture = self._dir(trainer) / "confusion_matrix.png"
            save_confusion_matrix(record["confusion_matrix"], names, picture)
        return path

    def _dir(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath if self.dirpath is not None else trainer.default_root_dir)


class PredictionWriter(BasePredictionWriter):
    """Saves each predicted label map as ``<dirpath>/<image stem>.png`` (mode P, class ids as values).

    The palette only colours the file; the pixel values are the train ids, so the output can be
    read back as a label map.

    Args:
        dirpath: Output folder; ``None`` uses ``<trainer.default_root_dir>/predictions``.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.dirpath = dirpath

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: list[torch.Tensor],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        folder = Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        palette = getattr(getattr(trainer, "datamodule", None), "palette", None)
        metas = batch.get("meta") if isinstance(batch, dict) else None
        for i, label_map in enumerate(prediction):
            name = Path(metas[i]["image_path"]).stem if metas else f"{batch_idx:06d}_{i:03d}"
            labels = label_map.to(torch.uint8).cpu().numpy()
            if palette:
                save_palette_png(labels, palette, folder / f"{name}.png")
            else:
                Image.fromarray(labels, mode="L").save(folder / f"{name}.png")


def read_results(path: str | Path) -> dict[str, Any]:
    """Load a ``results.json`` (a run directory or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    return json.loads(path.read_text())


def _seed() -> int | None:
    """The global seed (``seed_everything``; Lightning keeps it in ``PL_GLOBAL_SEED``)."""
    value = os.environ.get("PL_GLOBAL_SEED")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _inference_gmacs(pl_module: L.LightningModule, crop: Any) -> float | None:
    """Inference GMACs of the run's model at its training crop, counted on the meta device.

    Accounting never fails a run: a model this cannot rebuild gives ``None``.
    """
    hparams = getattr(pl_module, "model_hparams", None)
    if not hparams or crop is None:
        return None
    from vpnext.models import VPNeXt
    from vpnext.models.macs import measure_macs

    try:
        with torch.device("meta"):
            model = VPNeXt(**{**hparams, "pretrained": False})
        return round(measure_macs(model, tuple(crop))["gmacs"], 4)
    except Exception:  # noqa: BLE001 - the figure is informative only
        return None


def _other_evaluation(pl_module: L.LightningModule, name: str) -> dict[str, Any] | None:
    """mIoU, per-class IoU, step and image count of a second validation set, if it was scored."""
    evaluation = getattr(pl_module, "evaluation_results", {}).get(name)
    if evaluation is None:
        return None
    return {
        "mIoU": _finite(evaluation["mIoU"]),
        "per_class_iou": evaluation["per_class_iou"],
        "evaluated_at_step": evaluation["step"],
        "images_evaluated": evaluation.get("images_evaluated"),
    }


def _group_summary(datamodule: Any) -> dict[str, Any] | None:
    summary = getattr(datamodule, "group_summary", None)
    return jsonable(summary()) if callable(summary) else None


def _eval_protocol(pl_module: L.LightningModule) -> dict[str, Any] | None:
    protocol = getattr(pl_module, "eval_protocol", None)
    return protocol() if callable(protocol) else None


def _ckpt_path(trainer: L.Trainer, stage: str) -> str | None:
    if stage == "fit":
        return None
    path = getattr(trainer, "ckpt_path", None)
    return None if path is None else str(path)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
