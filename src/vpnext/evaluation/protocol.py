"""The test-time protocol of a run, resolved once and applied the same way everywhere.

``vpnext validate``/``test``/``predict`` (:class:`~vpnext.training.SegmentationModule`) and the
Python API (:class:`~vpnext.inference.Segmenter`) both call :func:`resolve_eval_protocol` on the
run's ``eval_*`` arguments and the dataset's window, then :func:`apply_protocol`, so a label map
from the API is the one the evaluation scores.

A protocol is a plain dict (it is also written into ``results.json``)::

    {"mode": "ss" | "ms_flip", "window": "whole" | "slide", "crop": [h, w] | None,
     "stride": [h, w] | None, "scales": [...], "flip": bool}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from vpnext.evaluation.inference import ModelFn, inference, ms_flip_inference
from vpnext.plain import optional_pair

__all__ = ["apply_protocol", "resolve_eval_protocol"]


def resolve_eval_protocol(
    eval_mode: str,
    eval_window: str,
    eval_crop: int | Sequence[int] | None,
    eval_stride: int | Sequence[int] | None,
    eval_scales: Sequence[float],
    img_size: int | Sequence[int] | None,
    data_crop: int | Sequence[int] | None,
    data_stride: int | Sequence[int] | None,
) -> dict[str, Any]:
    """The protocol the ``eval_*`` arguments of :class:`SegmentationModule` select on a dataset.

    Args:
        eval_mode: ``ss`` or ``ms_flip``.
        eval_window: ``data`` (the dataset's sliding window if it has one, else whole image),
            ``whole`` or ``slide``.
        eval_crop: Window size; ``None``: the dataset's window, else the training crop ``img_size``.
        eval_stride: Window stride; ``None``: the dataset's (when the window is the dataset's too),
            else 2/3 of the window.
        eval_scales: Scale ratios of ``ms_flip``.
        img_size: The model's training crop.
        data_crop: The dataset's sliding-window size (``None``: it defines none).
        data_stride: The dataset's sliding-window stride.

    Raises:
        ValueError: ``slide`` without any window size to use.
    """
    window = eval_window
    if window == "data":
        window = "slide" if data_crop is not None else "whole"
    crop = stride = None
    if window == "slide":
        crop = optional_pair(eval_crop) or optional_pair(data_crop) or optional_pair(img_size)
        if crop is None:
            raise ValueError("eval_window='slide' needs model.eval_crop (no dataset window, no img_size)")
        stride = optional_pair(eval_stride) or (
            optional_pair(data_stride) if eval_crop is None and data_stride is not None else None
        )
        stride = stride or (max(crop[0] * 2 // 3, 1), max(crop[1] * 2 // 3, 1))
    return {
        "mode": eval_mode,
        "window": window,
        "crop": None if crop is None else list(crop),
        "stride": None if stride is None else list(stride),
        "scales": list(eval_scales) if eval_mode == "ms_flip" else [1.0],
        "flip": eval_mode == "ms_flip",
    }


def apply_protocol(model_fn: ModelFn, images: Tensor, num_classes: int, protocol: dict[str, Any]) -> Tensor:
    """Scores (B, K, H, W) of normalised ``images`` under ``protocol``.

    Returns:
        Logits for ``ss``, averaged softmax probabilities for ``ms_flip``; their argmax is the
        prediction either way.
    """
    crop = None if protocol["crop"] is None else tuple(protocol["crop"])
    stride = None if protocol["stride"] is None else tuple(protocol["stride"])
    if protocol["mode"] == "ms_flip":
        return ms_flip_inference(
            model_fn,
            images,
            num_classes,
            protocol["scales"],
            protocol["flip"],
            protocol["window"],
            crop,
            stride,
        )
    return inference(model_fn, images, num_classes, protocol["window"], crop, stride)
