"""``SegmentationModule``: the LightningModule that trains and evaluates a VPNeXt model.

The network (:class:`~vpnext.models.VPNeXt`), the loss (:class:`~vpnext.losses.SegmentationLoss`),
test-time inference (:mod:`vpnext.evaluation.inference`) and the IoU convention
(:mod:`vpnext.evaluation.metrics`) live in their own modules; this class wires them to Lightning.
Its constructor repeats VPNeXt's arguments one by one (rather than taking a nested network
object) so that every ablation switch is a flat ``--model.<switch>`` with its documented choices
in ``vpnext fit --print_config``.

Evaluation protocol (DESIGN.md, Sec. 2): every val/test image is run at the size the data module
delivers (after the dataset's test resize), the logits are resized to the label's original
resolution and the argmax is scored there; intersections and unions accumulate over the whole split
(and across DDP ranks) in a torchmetrics ``MulticlassJaccardIndex``. Classes absent from both the
labels and the predictions of the split have no IoU (NaN) and are left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from vpnext.evaluation import (
    ImageTally,
    apply_protocol,
    coverage_flags,
    jaccard_index,
    miou_from_torchmetrics,
    resize_to,
    resolve_eval_protocol,
)
from vpnext.losses import (
    DICE_WEIGHT,
    FOCAL_WEIGHT,
    PRESENCE_WEIGHT,
    AuxWeighting,
    PixelLoss,
    SegmentationLoss,
)
from vpnext.models import MODEL_ARGS, VPNeXt
from vpnext.models.vpnext import MODEL_DEFAULTS
from vpnext.schema import CLASSES_KEY
from vpnext.training.optim import build_optimizer, build_scheduler

__all__ = ["CLASSES_KEY", "MODEL_ARGS", "SegmentationModule"]


_STAGE_PREFIX = {"validate": "val", "test": "test"}


class SegmentationModule(L.LightningModule):
    """Trains a :class:`~vpnext.models.VPNeXt` and evaluates it by mIoU.

    Args:
        num_classes: Number of classes K (the CLI links it from the data module).
        loss: Per-pixel loss: ``mask`` (sigmoid focal + dice over present masks + class presence,
            the paper's), ``mask_all`` (focal + dice over all K masks) or ``ce``.
        aux_weight: Weight of the auxiliary logit maps' losses (in total or per layer).
        aux_weighting: ``total`` (each of n maps gets aux_weight / n) or ``per_layer``.
        align_weight: Weight of the naive-align MSE (``aux=naive_align``).
        focal_weight: Focal weight of the mask loss.
        dice_weight: Dice weight of the mask loss.
        presence_weight: Class-presence weight of the ``mask`` loss.
        class_weight: Per-class weights of the ``ce`` loss (one per class; ``None``: all 1), e.g.
            the inverse-log-frequency weights ``scripts/class_weights.py`` prints for a data set.
        ignore_index: Label value excluded from loss and metrics.
        lr: Base AdamW learning rate (the ViT's top block; lower blocks get layer decay).
        weight_decay: AdamW weight decay of weight matrices (none on 1-D params, position
            embedding, class/register tokens and class embeddings).
        layer_decay: Layer-wise lr decay of the ViT: block ``i`` of N gets ``layer_decay ** (N - i)``.
        decoder_lr_mult: Learning-rate multiplier of every parameter outside the ViT.
        warmup_iters: Linear warmup length in optimiser steps.
        warmup_ratio: Learning-rate factor at the first step of the warmup.
        poly_power: Exponent of the poly decay after the warmup.
        eval_mode: ``ss`` (single scale) or ``ms_flip`` (multi-scale + horizontal flip, softmax average).
        eval_window: ``data`` (the dataset's protocol: sliding window where it defines one),
            ``whole`` (the full image in one pass) or ``slide``.
        eval_crop: Sliding-window size; ``None`` uses the dataset's window, else the training crop.
        eval_stride: Sliding-window stride; ``None`` uses the dataset's, else 2/3 of the window.
        eval_scales: Scale ratios of ``ms_flip``.
        compile: Run the model's training forward and its inference through ``torch.compile``:
            ``True`` with the default backend (inductor), a string names another backend
            (``aot_eager``). The whole model is one graph (the deformable conv and its backward are
            opaque ops, no graph break); the arithmetic is unchanged.
        **model_args: The other arguments of :class:`~vpnext.models.VPNeXt`, with its defaults
            and its documentation: backbone (``backbone``, ``pretrained``, ``img_size``,
            ``drop_path_rate``, ``backbone_kwargs``), decoder widths (``decoder``, ``decoder_dim``,
            ...) and the ablation switches (``aux``, ``aux_layers``, ``head``, ``upsampler``,
            ``hiclr_depth``, ...). Each is a flat ``--model.*`` option: the command line reads
            them from ``VPNeXt``'s signature, the one place their defaults are written.
    """

    def __init__(
        self,
        num_classes: int,
        loss: PixelLoss = "mask",
        aux_weight: float = 0.4,
        aux_weighting: AuxWeighting = "total",
        align_weight: float = 1.0,
        focal_weight: float = FOCAL_WEIGHT,
        dice_weight: float = DICE_WEIGHT,
        presence_weight: float = PRESENCE_WEIGHT,
        class_weight: list[float] | None = None,
        ignore_index: int = 255,
        lr: float = 6e-5,
        weight_decay: float = 0.05,
        layer_decay: float = 0.9,
        decoder_lr_mult: float = 10.0,
        warmup_iters: int = 1500,
        warmup_ratio: float = 1e-6,
        poly_power: float = 1.0,
        eval_mode: Literal["ss", "ms_flip"] = "ss",
        eval_window: Literal["data", "whole", "slide"] = "data",
        eval_crop: int | None = None,
        eval_stride: int | None = None,
        eval_scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
        compile: bool | str = False,
        **model_args: Any,
    ) -> None:
        super().__init__()
        training_args = {k: v for k, v in locals().items() if k not in ("self", "model_args", "__class__")}
        unknown = sorted(set(model_args) - set(MODEL_ARGS))
        if unknown:
            raise TypeError(f"SegmentationModule got unknown argument(s): {', '.join(unknown)}")
        model_args = {**MODEL_DEFAULTS, **model_args}
        # Every VPNeXt argument is a hyperparameter of the run (defaults included), in its order.
        self.save_hyperparameters(
            {"num_classes": num_classes, **{k: model_args[k] for k in MODEL_ARGS[1:]}, **training_args}
        )
        self.model = VPNeXt(num_classes=num_classes, **model_args)
        self.criterion = SegmentationLoss(
            loss=loss,
            aux_weight=aux_weight,
            aux_weighting=aux_weighting,
            align_weight=align_weight,
            focal_weight=focal_weight,
            dice_weight=dice_weight,
            presence_weight=presence_weight,
            ignore_index=ignore_index,
            class_weight=class_weight,
        )
        self.val_iou = jaccard_index(num_classes, ignore_index)
        self.test_iou = jaccard_index(num_classes, ignore_index)
        # The val split scored beside held-out groups (SegDataModule's val_groups); no saved state.
        self.official_val_iou = jaccard_index(num_classes, ignore_index)
        # How often each image of the split was scored (summed over ranks at the epoch end).
        self.val_images = ImageTally()
        self.test_images = ImageTally()
        self.official_val_images = ImageTally()
        #: Last completed evaluation per set ("val", "official_val", "test"): mIoU, per-class IoU,
        #: step, image counts.
        self.evaluation_results: dict[str, dict[str, Any]] = {}
        #: Optimiser step of the checkpoint the weights came from (validate/test/predict report it).
        self.checkpoint_step = 0
        #: ``torch.compile``d model entry points, made on first use (``compile``).
        self._compiled: dict[str, Callable[[Tensor], Any]] = {}

    def model_fn(self, name: Literal["forward_train", "predict"]) -> Callable[[Tensor], Any]:
        """The model's ``forward_train`` or ``predict``, compiled if the run asks for it."""
        fn = self.model if name == "predict" else self.model.forward_train  # model(x) is predict
        setting = self.hparams.get("compile", False)
        if not setting:
            return fn
        if name not in self._compiled:
            self._compiled[name] = (
                torch.compile(fn) if setting is True else torch.compile(fn, backend=setting)
            )
        return self._compiled[name]

    # ---- model facts other tools read -----------------------------------------------------------
    @property
    def model_hparams(self) -> dict[str, Any]:
        """The VPNeXt constructor arguments (every ablation switch) of this run."""
        return {name: self.hparams[name] for name in MODEL_ARGS}

    @property
    def class_names(self) -> list[str]:
        """Class names from the data module, or ``class_<i>`` when there is none."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, "class_names", None)
        if names is not None and len(names) == self.hparams.num_classes:
            return [str(n) for n in names]
        return [f"class_{i}" for i in range(self.hparams.num_classes)]

    @property
    def trained_steps(self) -> int:
        """Optimiser steps behind the current weights: the trainer's in a fit, else the checkpoint's."""
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        return int(self.global_step) if fitting else max(int(self.global_step), self.checkpoint_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the class names and palette, so inference needs no dataset spec to name classes."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        palette = getattr(datamodule, "palette", None)
        checkpoint[CLASSES_KEY] = {
            "names": self.class_names,
            "palette": None if palette is None else [[int(c) for c in rgb] for rgb in palette],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.checkpoint_step = int(checkpoint.get("global_step", 0))

    def eval_protocol(self) -> dict[str, Any]:
        """The resolved test-time protocol: mode, window (whole/slide), crop, stride, scales.

        See :func:`vpnext.evaluation.resolve_eval_protocol`; the dataset's window comes from the
        trainer's data module.
        """
        hp = self.hparams
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return resolve_eval_protocol(
            hp.eval_mode,
            hp.eval_window,
            hp.eval_crop,
            hp.eval_stride,
            hp.eval_scales,
            hp.img_size,
            getattr(datamodule, "slide_crop", None),
            getattr(datamodule, "slide_stride", None),
        )

    # ---- training -------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Segment normalised images (B, 3, H, W) with the configured test-time protocol.

        Returns:
            (B, K, H, W) scores: logits for ``ss``, averaged probabilities for ``ms_flip``.
        """
        return apply_protocol(
            self.model_fn("predict"), images, self.hparams.num_classes, self.eval_protocol()
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One training iteration: train-mode forward, every loss term logged separately."""
        images, labels = batch["image"], batch["label"]
        terms = self.criterion(self.model_fn("forward_train")(images), labels)
        batch_size = images.shape[0]
        for name, value in terms.items():
            key = "train/loss" if name == "loss" else f"train/loss_{name}"
            self.log(key, value, prog_bar=name == "loss", batch_size=batch_size)
        return terms["loss"]

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with layer-decayed ViT groups and a faster decoder, warmup + poly per step."""
        hp = self.hparams
        optimizer = build_optimizer(self.model, hp.lr, hp.weight_decay, hp.layer_decay, hp.decoder_lr_mult)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("the poly schedule needs a finite run: set trainer.max_steps (or max_epochs)")
        scheduler = build_scheduler(optimizer, int(total), hp.warmup_iters, hp.warmup_ratio, hp.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- evaluation -----------------------------------------------------------------------------
    def _score_batch(self, batch: dict[str, Any]) -> list[tuple[Tensor, Tensor]]:
        """(prediction, label) pairs at the labels' original resolution, padding removed."""
        images, labels = batch["image"], batch["label"]
        metas = batch.get("meta") or [{} for _ in range(images.shape[0])]
        img_sizes = [tuple(m.get("img_size", images.shape[-2:])) for m in metas]
        ori_sizes = [tuple(m.get("ori_size", labels.shape[-2:])) for m in metas]
        # Unpadded batches run in one pass; padded ones per sample, so padding never reaches the
        # model (it would shift sliding windows and leak into resized logits).
        if all(s == tuple(images.shape[-2:]) for s in img_sizes) and all(
            s == tuple(labels.shape[-2:]) for s in ori_sizes
        ):
            scores = resize_to(self(images), labels.shape[-2:])
            return [(scores.argmax(1), labels)]
        pairs = []
        for i, ((h, w), (oh, ow)) in enumerate(zip(img_sizes, ori_sizes, strict=True)):
            scores = resize_to(self(images[i : i + 1, :, :h, :w]), (oh, ow))
            pairs.append((scores.argmax(1), labels[i : i + 1, :oh, :ow]))
        return pairs

    def _val_sets(self) -> tuple[str, ...]:
        """Names of the validation loaders, in order (``val``, then ``official_val`` if any)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        return tuple(getattr(datamodule, "val_set_names", ("val",)))

    def _val_state(self, dataloader_idx: int) -> tuple[Any, ImageTally]:
        name = self._val_sets()[dataloader_idx]
        return getattr(self, f"{name}_iou"), getattr(self, f"{name}_images")

    def on_validation_epoch_start(self) -> None:
        loaders = self.trainer.val_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        for idx, loader in enumerate(loaders):
            self._val_state(idx)[1].reset(_split_size(loader))

    def on_test_epoch_start(self) -> None:
        self.test_images.reset(_split_size(self.trainer.test_dataloaders))

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Accumulate the validation confusion counts of one batch (and which images it held)."""
        metric, tally = self._val_state(dataloader_idx)
        for pred, label in self._score_batch(batch):
            metric.update(pred, label)
        tally.update(_metas(batch))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Accumulate the test confusion counts of one batch (and which images it held)."""
        for pred, label in self._score_batch(batch):
            self.test_iou.update(pred, label)
        self.test_images.update(_metas(batch))

    def on_validation_epoch_end(self) -> None:
        """Log ``val/mIoU`` and ``val/IoU/<class>`` over the whole split (all ranks).

        With a second validation set (``official_val``), also ``official_val/mIoU`` and its IoUs.
        """
        for idx, name in enumerate(self._val_sets()):
            self._log_split(name, *self._val_state(idx))

    def on_test_epoch_end(self) -> None:
        """Log ``test/mIoU`` and ``test/IoU/<class>`` over the whole split (all ranks)."""
        self._log_split("test", self.test_iou, self.test_images)

    def _log_split(self, split: str, metric: Any, tally: ImageTally) -> None:
        per_class = metric.compute()  # synced across ranks by torchmetrics
        with metric.sync_context(should_sync=True, should_unsync=True):  # a no-op on one process
            confusion = metric.confmat.detach().cpu().long().tolist()  # rows: label, columns: prediction
        metric.reset()
        # The one collective of the tally, after the last batch: ranks may run different numbers
        # of batches (the evaluation sampler does not pad), so nothing may sync per step.
        images = tally.compute(lambda t: self.trainer.strategy.reduce(t.to(self.device), reduce_op="sum"))
        flags = coverage_flags(images["images_evaluated"], images["images_distinct"], images["split_size"])
        if flags["images_repeated"] and not self.trainer.sanity_checking:
            rank_zero_warn(
                f"{split}: {images['images_evaluated']} images scored, {images['images_distinct']} of them "
                f"distinct: {flags['images_repeated']} repeated scorings count again in the mIoU (does a "
                "padding distributed sampler feed this loader?)"
            )
        miou = float(miou_from_torchmetrics(per_class))
        names = self.class_names
        values = {name: float(v) for name, v in zip(names, per_class.tolist(), strict=True)}
        # Every rank holds the same synced values. sync_dist with "max" keeps them bit-exact (a
        # mean over ranks may round) and keeps Lightning from warning about unsynced epoch logs.
        self.log(f"{split}/mIoU", miou, prog_bar=True, sync_dist=True, reduce_fx="max")
        for name, value in values.items():
            if not math.isnan(value):  # absent class: no IoU (reported as null in results.json)
                self.log(f"{split}/IoU/{name}", value, sync_dist=True, reduce_fx="max")
        if not self.trainer.sanity_checking:
            self.evaluation_results[split] = {
                "mIoU": miou,
                "per_class_iou": {n: (None if math.isnan(v) else v) for n, v in values.items()},
                "step": self.trained_steps,
                "confusion_matrix": confusion,
                **images,
                **flags,
            }

    # ---- prediction -----------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[Tensor]:
        """Argmax label maps (H0, W0) (int64), one per image, at each image's original size."""
        images = batch["image"]
        metas = batch.get("meta") or [{} for _ in range(images.shape[0])]
        maps = []
        for i, meta in enumerate(metas):
            h, w = meta.get("img_size", images.shape[-2:])
            scores = self(images[i : i + 1, :, :h, :w])
            maps.append(resize_to(scores, meta.get("ori_size", (h, w))).argmax(1)[0])
        return maps


def _metas(batch: dict[str, Any]) -> list[Any]:
    """One ``meta`` dict (or ``None``) per sample of a batch."""
    metas = batch.get("meta")
    return list(metas) if metas else [None] * int(batch["image"].shape[0])


def _split_size(dataloaders: Any) -> int | None:
    """Number of samples of the (single) evaluation loader's dataset, ``None`` if not sized."""
    dataset = getattr(dataloaders, "dataset", None)
    try:
        return None if dataset is None else len(dataset)
    except TypeError:  # an iterable dataset without __len__
        return None
