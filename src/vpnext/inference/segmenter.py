"""``Segmenter``: a trained checkpoint as a Python object that labels images.

::

    from vpnext.inference import Segmenter

    segmenter = Segmenter.from_checkpoint("runs/quickstart/<run>/checkpoints/best.ckpt")
    labels = segmenter.predict("photo.jpg")        # (H, W) int64 train ids at the photo's size

Everything the evaluation does to an image comes from the checkpoint: the data module's
normalisation (``mean``/``std``, else the backbone's) and test resize, the dataset's sliding
window and the model's ``eval_*`` arguments, resolved by the same functions
:class:`~vpnext.training.SegmentationModule` uses. A label map from :meth:`Segmenter.predict` is
therefore the argmax ``vpnext validate`` scores for that image (tested on a trained checkpoint).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vpnext.checkpoint_io import CorruptCheckpointError, safe_load
from vpnext.data.catalog import DatasetSpec
from vpnext.data.settings import DataSettings
from vpnext.evaluation import apply_protocol, resize_to, resolve_eval_protocol
from vpnext.inference.images import ImageInput, to_rgb
from vpnext.models import MODEL_ARGS, VPNeXt
from vpnext.schema import CLASSES_KEY

__all__ = ["EVAL_ARGS", "Segmenter"]

#: ``SegmentationModule`` arguments that select the test-time protocol (overridable per Segmenter).
EVAL_ARGS = ("eval_mode", "eval_window", "eval_crop", "eval_stride", "eval_scales")
_EVAL_DEFAULTS = {"eval_mode": "ss", "eval_window": "data", "eval_crop": None, "eval_stride": None}
_EVAL_DEFAULTS["eval_scales"] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


class Segmenter:
    """A VPNeXt model with the preprocessing and test-time protocol it was evaluated with.

    Build it with :meth:`from_checkpoint`; the constructor takes the resolved pieces.

    Args:
        model: The network (set to eval mode and moved to ``device`` here).
        data: The run's data settings, rebuilt from the checkpoint (normalisation, test resize,
            sliding window, class names, palette); nothing is read from the dataset's files.
        protocol: The resolved protocol (:func:`vpnext.evaluation.resolve_eval_protocol`).
        device: Where the model runs.
        classes: Class names and palette saved in the checkpoint (``{"names": [...], "palette":
            [[r, g, b], ...]}``); ``None`` (checkpoints written before they were saved) takes them
            from ``data``'s dataset spec.
    """

    def __init__(
        self,
        model: VPNeXt,
        data: DataSettings,
        protocol: dict[str, Any],
        device: str | torch.device = "cpu",
        classes: dict[str, Any] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self._names = tuple(str(n) for n in data.class_names)
        self._palette = tuple(tuple(int(c) for c in rgb) for rgb in data.palette)
        if classes and len(classes.get("names") or []) == model.num_classes:
            self._names = tuple(str(n) for n in classes["names"])
        if classes and len(classes.get("palette") or []) == model.num_classes:
            self._palette = tuple(tuple(int(c) for c in rgb) for rgb in classes["palette"])
        self.model = model.eval().to(self.device)
        self.data = data
        self.protocol = protocol
        from vpnext.data.transforms import build_eval_transform  # albumentations: only when used

        self._transform = build_eval_transform(data.test_scale, mean=data.mean, std=data.std)  # type: ignore[arg-type]

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        data_root: str | Path | None = None,
        **eval_overrides: Any,
    ) -> Segmenter:
        """Load a ``vpnext fit`` checkpoint (``best.ckpt``/``last.ckpt``), ``weights_only``.

        Args:
            path: The checkpoint.
            device: Where the model runs (``cpu``, ``cuda``, ``cuda:1``...).
            data_root: Only for models trained on a ``folder`` dataset whose folder is not at the
                path the checkpoint records: a folder with that dataset's ``meta.json`` (class
                names and palette).
            **eval_overrides: Any of :data:`EVAL_ARGS` to use instead of the checkpoint's, e.g.
                ``eval_mode="ms_flip"``.

        Raises:
            FileNotFoundError: No such file.
            vpnext.checkpoint_io.CorruptCheckpointError: Not a checkpoint, or not one of
                ``vpnext fit``.
            vpnext.checkpoint_io.UnsafeCheckpointError: The file carries pickled code.
            ValueError: An unknown override.
        """
        unknown = sorted(set(eval_overrides) - set(EVAL_ARGS))
        if unknown:
            raise ValueError(
                f"unknown evaluation override(s) {', '.join(unknown)}; known: {', '.join(EVAL_ARGS)}"
            )
        checkpoint = safe_load(path)
        hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
        state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
        if not isinstance(hparams, dict) or "num_classes" not in hparams or not isinstance(state, dict):
            raise CorruptCheckpointError(
                f"{path}: not a vpnext checkpoint (no model hyperparameters and state_dict; "
                "expected a best.ckpt/last.ckpt written by `vpnext fit`)"
            )
        model = VPNeXt(**{**{k: hparams[k] for k in MODEL_ARGS if k in hparams}, "pretrained": False})
        weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        model.load_state_dict(weights)
        data = _data_module(checkpoint.get("datamodule_hyper_parameters") or {}, data_root)
        evaluation = {k: hparams.get(k, _EVAL_DEFAULTS[k]) for k in EVAL_ARGS} | eval_overrides
        protocol = resolve_eval_protocol(
            **evaluation,
            img_size=hparams.get("img_size"),
            data_crop=data.slide_crop,
            data_stride=data.slide_stride,
        )
        return cls(model, data, protocol, device, classes=checkpoint.get(CLASSES_KEY))

    # ---- what the model knows -----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return self.model.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in train-id order (the checkpoint's; the dataset spec's for older ones)."""
        return self._names

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        """One RGB colour per class (the checkpoint's; the dataset spec's for older ones)."""
        return self._palette  # type: ignore[return-value]

    @property
    def spec(self) -> DatasetSpec:
        """The dataset spec the model was trained on."""
        return self.data.spec

    # ---- inference ------------------------------------------------------------------------------
    def preprocess(self, image: ImageInput) -> tuple[Tensor, tuple[int, int]]:
        """The normalised (1, 3, h, w) input of the model and the image's original (H, W)."""
        rgb = to_rgb(image)
        normalised = self._transform(image=rgb)["image"]
        tensor = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32))
        return tensor[None].to(self.device), (int(rgb.shape[0]), int(rgb.shape[1]))

    @torch.inference_mode()
    def scores(self, image: ImageInput) -> Tensor:
        """(K, H, W) scores at the image's size: logits (``ss``) or probabilities (``ms_flip``)."""
        tensor, size = self.preprocess(image)
        return resize_to(apply_protocol(self.model, tensor, self.num_classes, self.protocol), size)[0]

    def predict(self, image: ImageInput) -> np.ndarray:
        """The label map (H, W), int64 train ids, at the input's size.

        Args:
            image: A file path, a PIL image, or a uint8/uint16 array (H, W) or (H, W, 1|3|4);
                see :func:`vpnext.inference.to_rgb`.
        """
        return self.scores(image).argmax(0).cpu().numpy()

    def predict_proba(self, image: ImageInput) -> np.ndarray:
        """Per-class probabilities (K, H, W), float32, at the input's size.

        Softmax of the logits for ``ss``; the averaged probabilities themselves for ``ms_flip``.
        Their argmax is :meth:`predict`.
        """
        return self.probabilities(self.scores(image))

    def probabilities(self, scores: Tensor) -> np.ndarray:
        """(K, H, W) float32 probabilities from :meth:`scores` (softmax of ``ss`` logits)."""
        probs = scores if self.protocol["mode"] == "ms_flip" else torch.softmax(scores, dim=0)
        return probs.float().cpu().numpy()

    def predict_many(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """:meth:`predict` for each image (one at a time: sizes may differ)."""
        return [self.predict(image) for image in images]

    def __repr__(self) -> str:
        p = self.protocol
        window = p["window"] if p["window"] == "whole" else f"slide {p['crop']} / {p['stride']}"
        return (
            f"Segmenter({self.num_classes} classes of {self.data.dataset_name!r}, mode {p['mode']}, "
            f"window {window}, test resize {self.data.test_scale}, device {self.device})"
        )


def _data_module(hparams: dict[str, Any], data_root: str | Path | None) -> DataSettings:
    """The run's data settings from its saved hyperparameters (no dataset file is opened)."""
    accepted = set(inspect.signature(DataSettings).parameters)
    kwargs = {k: v for k, v in hparams.items() if k in accepted}
    if data_root is not None:
        kwargs["root"] = str(data_root)
    if kwargs.get("dataset") == "folder" and not Path(str(kwargs.get("root"))).is_dir():
        raise FileNotFoundError(
            f"the model was trained on the folder dataset at {kwargs.get('root')}, which is not here; "
            "pass data_root= a folder holding its meta.json (class names and palette)"
        )
    return DataSettings(**kwargs)
