"""Shared machinery of every dataset: reading, label conversion, up-front checks, collation.

A sample is a dict::

    {"image": float32 tensor (3, h, w), normalised,
     "label": int64 tensor (H, W), train ids 0..K-1 and 255 = ignore (absent for unlabelled data),
     "meta":  {"image_path": str, "label_path": str | None, "ori_size": (H0, W0),
               "img_size": (h, w), "index": int}}

``ori_size`` is the size of the image file; ``img_size`` the size of the returned image before any
batch padding; ``index`` the sample's position in the split (the evaluation counts how often each
image was scored by it). In evaluation mode (``keep_original_label=True``) the label is the
untouched file content at ``ori_size`` while the image may be resized, so scores are computed at
the original resolution.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from vpnext.data.catalog import IGNORE_INDEX, DatasetSpec
from vpnext.data.errors import DatasetError

CheckLevel = Literal["none", "headers", "decode"]
# Modes whose pixel values are class indices: grayscale and palette ("P" is how VOC stores its
# coloured masks: the indices are the classes, the palette only colours them).
_LABEL_MODES = ("L", "P")
_MAX_LISTED_PROBLEMS = 10


@dataclass(frozen=True)
class Sample:
    """Paths of one sample. ``label_path`` is ``None`` for unlabelled (prediction) images."""

    image_path: Path
    label_path: Path | None


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3), naming the file on any failure.

    Args:
        path: Image file (any format PIL reads; grayscale and RGBA are converted to RGB).

    Returns:
        The decoded image.

    Raises:
        DatasetError: Missing, unreadable or truncated file.
    """
    try:
        with Image.open(path) as img:
            if img.mode in _WIDE_MODES:  # 16/32-bit grayscale: scale to 8 bits instead of clipping
                wide = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") else max(float(wide.max()), 1.0)
                gray = np.clip(wide / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: image file is missing") from err
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path}: cannot decode image ({err})") from err


def read_label(path: Path, lut: np.ndarray, num_classes: int) -> np.ndarray:
    """Decode a label map and convert stored values to train ids through ``lut``.

    Args:
        path: Single-channel PNG (mode L, or P read as palette indices).
        lut: int16 table of 256 entries from :meth:`DatasetSpec.label_lut` (-1 = invalid value).
        num_classes: Used in the error message only.

    Returns:
        uint8 (H, W) train ids, 255 = ignore.

    Raises:
        DatasetError: Missing/unreadable file, a colour (RGB) label, or values outside the format.
    """
    try:
        with Image.open(path) as img:
            if img.mode not in _LABEL_MODES:
                raise DatasetError(
                    f"{path}: label must be single-channel (mode L or P), got mode {img.mode}; "
                    "colour-coded labels must be converted to class indices first"
                )
            raw = np.asarray(img)
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: label file is missing") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"{path}: cannot decode label ({err})") from err
    label = lut[raw]
    if (label < 0).any():
        bad = np.unique(raw[label < 0])
        raise DatasetError(
            f"{path}: label values {bad.tolist()[:10]} are outside the {num_classes} classes "
            f"of this dataset (allowed: the class ids and {IGNORE_INDEX} = ignore)"
        )
    return label.astype(np.uint8)


#: Image modes with more than 8 bits per pixel (16-bit PNGs, 32-bit integer or float TIFFs).
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) and mode from the file header only (no pixel decoding)."""
    try:
        with Image.open(path) as img:
            return img.size, img.mode
    except Image.DecompressionBombError as err:  # the header is fine, decoding it would not be
        raise OSError(f"too large to decode safely: {err}") from err


class SegmentationDataset(Dataset):
    """A list of (image, label) files plus the spec that says how to read the labels.

    Subclasses only implement :meth:`list_samples` for their on-disk layout.

    Args:
        root: Dataset root folder.
        split: Split name (dataset-specific; see each subclass).
        spec: Protocol and label encoding of the dataset.
        transform: Albumentations-style callable ``transform(image=..., mask=...) -> dict``;
            normalisation must be part of it. ``None`` converts to float in [0, 1] only.
        keep_original_label: Pass only the image through ``transform`` and return the label as
            stored (converted to train ids) at the original resolution; for evaluation.
        check_files: Up-front scan in the constructor: ``"headers"`` checks that every listed file
            exists, is an image, and that image and label sizes agree and the label is
            single-channel (header reads only, cheap); ``"decode"`` also decodes every file and
            checks label values (slow on big datasets); ``"none"`` skips the scan (problems then
            surface when a sample is loaded).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        spec: DatasetSpec,
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        keep_original_label: bool = False,
        check_files: CheckLevel = "headers",
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.spec = spec
        self.transform = transform
        self.keep_original_label = keep_original_label
        self._lut = spec.label_lut()
        #: Decoded (image, label) per image path once :meth:`keep_decoded` ran, else ``None``.
        self._decoded: dict[Path, tuple[np.ndarray, np.ndarray | None]] | None = None
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root of {spec.name!r} does not exist")
        self.samples: list[Sample] = self.list_samples()
        if not self.samples:
            raise DatasetError(f"{self.root}: split {split!r} of {spec.name!r} lists no samples")
        if check_files != "none":
            self.check(decode=check_files == "decode")

    def list_samples(self) -> list[Sample]:
        """Return the split's samples in a fixed order; raise DatasetError if the split is missing."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, samples: Iterable[Sample], split: str) -> SegmentationDataset:
        """A copy reading ``samples`` (already checked) under the split name ``split``.

        Used to regroup splits, e.g. to validate on whole held-out groups (:mod:`vpnext.data.groups`).
        """
        clone = copy.copy(self)
        clone.samples = list(samples)
        clone.split = split
        return clone

    def check(self, decode: bool = False) -> None:
        """Scan every sample and raise one DatasetError listing all problems found.

        Args:
            decode: Also decode pixels (catches truncated files and bad label values).
        """
        problems: list[str] = []
        for sample in self.samples:
            problems.extend(self._check_sample(sample, decode))
        if problems:
            shown = "\n  - ".join(problems[:_MAX_LISTED_PROBLEMS])
            more = len(problems) - _MAX_LISTED_PROBLEMS
            tail = f"\n  ... and {more} more" if more > 0 else ""
            raise DatasetError(
                f"{len(problems)} problem(s) in split {self.split!r} of {self.spec.name!r} "
                f"under {self.root}:\n  - {shown}{tail}"
            )

    def _check_sample(self, sample: Sample, decode: bool) -> list[str]:
        paths = [sample.image_path] + ([sample.label_path] if sample.label_path else [])
        missing = [f"{p}: file is missing" for p in paths if not p.is_file()]
        if missing:
            return missing
        try:
            img_size, _ = _header(sample.image_path)
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            return [f"{sample.image_path}: cannot read image header ({err})"]
        if sample.label_path is not None:
            try:
                lbl_size, lbl_mode = _header(sample.label_path)
            except (UnidentifiedImageError, OSError, SyntaxError) as err:
                return [f"{sample.label_path}: cannot read label header ({err})"]
            if lbl_mode not in _LABEL_MODES:
                return [
                    f"{sample.label_path}: label must be single-channel (mode L or P), got mode {lbl_mode}"
                ]
            if lbl_size != img_size:
                return [
                    f"{sample.label_path}: label size {lbl_size[0]}x{lbl_size[1]} (WxH) differs from "
                    f"image {sample.image_path.name} {img_size[0]}x{img_size[1]}"
                ]
        if decode:
            try:
                read_image(sample.image_path)
                if sample.label_path is not None:
                    read_label(sample.label_path, self._lut, self.spec.num_classes)
            except DatasetError as err:
                return [str(err)]
        return []

    @property
    def decoded(self) -> bool:
        """Whether :meth:`keep_decoded` ran: samples come from memory, not from the files."""
        return self._decoded is not None

    def decoded_bytes(self) -> int:
        """Bytes the decoded frames of this split take (RGB image + label), from the file headers."""
        total = 0
        for sample in self.samples:
            (width, height), _ = _header(sample.image_path)
            total += width * height * (3 + (sample.label_path is not None))
        return total

    def keep_decoded(self) -> int:
        """Decode every sample once and serve it from memory from now on; returns the bytes kept.

        The transforms run on the kept arrays at every access, so samples are exactly those read
        from the files. The arrays are read-only: a transform that wrote into its input would
        otherwise change the data of every later epoch. DataLoader workers started after this
        (forked) share the memory with this process.
        """
        decoded: dict[Path, tuple[np.ndarray, np.ndarray | None]] = {}
        for sample in self.samples:
            image, label = self._decode(sample)
            for array in (image, label):
                if array is not None:
                    array.flags.writeable = False
            decoded[sample.image_path] = (image, label)
        self._decoded = decoded
        return sum(a.nbytes for pair in decoded.values() for a in pair if a is not None)

    def _decode(self, sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        if self._decoded is not None and sample.image_path in self._decoded:
            return self._decoded[sample.image_path]
        image = read_image(sample.image_path)
        label = None
        if sample.label_path is not None:
            label = read_label(sample.label_path, self._lut, self.spec.num_classes)
            if label.shape != image.shape[:2]:
                raise DatasetError(
                    f"{sample.label_path}: label size {label.shape} (HxW) differs from image "
                    f"{sample.image_path.name} {image.shape[:2]}"
                )
        return image, label

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image, label = self._decode(sample)
        ori_size = (int(image.shape[0]), int(image.shape[1]))
        if self.transform is not None:
            if label is None or self.keep_original_label:
                image = self.transform(image=image)["image"]
            else:
                out = self.transform(image=image, mask=label)
                image, label = out["image"], out["mask"]
        else:
            image = image.astype(np.float32) / 255.0
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
            "meta": {
                "image_path": str(sample.image_path),
                "label_path": None if sample.label_path is None else str(sample.label_path),
                "ori_size": ori_size,
                "img_size": (int(image.shape[0]), int(image.shape[1])),
                "index": int(index),
            },
        }
        if label is not None:
            item["label"] = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        return item


def _pad_stack(tensors: Sequence[Tensor], value: float) -> Tensor:
    """Stack tensors of equal rank, padding the last two dims at the bottom/right to the max size."""
    h = max(t.shape[-2] for t in tensors)
    w = max(t.shape[-1] for t in tensors)
    if all(t.shape[-2:] == (h, w) for t in tensors):
        return torch.stack(list(tensors))
    out = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], h, w), value)
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-2], : t.shape[-1]] = t
    return out


def seg_collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples of possibly different sizes.

    Images are padded at the bottom/right with 0 (the normalised mean, as mmseg's data
    preprocessor does) and labels with 255 to the largest size in the batch; images and labels are
    padded independently because evaluation labels keep the original resolution. Each sample's
    true sizes stay in ``meta`` (``img_size``, ``ori_size``) so padding can be cropped away.

    Args:
        batch: Samples as returned by :class:`SegmentationDataset`.

    Returns:
        ``{"image": (B, 3, H, W), "label": (B, H', W') if labelled, "meta": list of B dicts}``.
    """
    out: dict[str, Any] = {
        "image": _pad_stack([s["image"] for s in batch], 0.0),
        "meta": [s["meta"] for s in batch],
    }
    if all("label" in s for s in batch):
        out["label"] = _pad_stack([s["label"] for s in batch], IGNORE_INDEX)
    elif any("label" in s for s in batch):
        raise ValueError("cannot collate labelled and unlabelled samples into one batch")
    return out
