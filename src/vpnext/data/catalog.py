"""Per-dataset protocol: classes, label encoding, crop sizes and test-time resize/sliding window.

``DATASETS`` is the one place other code asks about a dataset, e.g.
``get_dataset_spec("pascal_context").num_classes``. Crop sizes and scales follow the paper
(Sec. V) and the reference codebases (DESIGN.md section 2). Scales use mmsegmentation's
keep-ratio convention: ``(long, short)`` means "rescale by ``min(long / long_side,
short_side_target / short_side)``", so ``(2048, 512)`` is effectively "short side 512" for
ordinary photos.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vpnext.data import classes as C
from vpnext.data.errors import DatasetError
from vpnext.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE

IGNORE_INDEX = 255


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that differs between datasets, apart from how files are found.

    Attributes:
        name: Registry key (also the ``dataset`` argument of ``SegDataModule``).
        class_names: Names of the evaluated classes, in train-id order. Empty for ``folder``
            until resolved from the dataset's ``meta.json`` by :func:`get_dataset_spec`.
        palette: One RGB colour per class (visualisation only).
        crop_size: Training crop ``(height, width)`` of the paper protocol.
        train_scale: Base ``(long, short)`` scale that the random 0.5-2.0 rescale multiplies;
            ``None`` rescales relative to each image's own size.
        test_scale: Keep-ratio ``(long, short)`` resize applied to val/test images; ``None`` keeps
            the native resolution.
        slide_crop: Sliding-window size ``(h, w)`` for single-scale testing; ``None`` means
            whole-image inference.
        slide_stride: Sliding-window stride ``(h, w)``; ``None`` when ``slide_crop`` is.
        reduce_zero_label: Label 0 is "background/other" and is ignored; the rest shift by -1.
        void_ids: Stored label values (after ``reduce_zero_label``) that mean "ignore".
        train_split: Default training split name.
        val_split: Default validation split name.
        test_split: Default test split name.
        group_pattern: How a file's group (video, city) is read from its path, for validation on
            held-out groups (:mod:`vpnext.data.groups`); ``None``: the dataset declares none.
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[C.RGB, ...]
    crop_size: tuple[int, int]
    train_scale: tuple[int, int] | None
    test_scale: tuple[int, int] | None
    slide_crop: tuple[int, int] | None
    slide_stride: tuple[int, int] | None
    reduce_zero_label: bool = False
    void_ids: tuple[int, ...] = ()
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "val"
    group_pattern: str | None = None

    @property
    def num_classes(self) -> int:
        """Number of evaluated classes (labels ``0..num_classes-1``, 255 ignored)."""
        return len(self.class_names)

    @property
    def ignore_index(self) -> int:
        """Label value excluded from loss and metrics."""
        return IGNORE_INDEX

    def label_lut(self) -> np.ndarray:
        """Look-up table from stored label values to train ids.

        Returns:
            int16 array of 256 entries. Valid stored values map to ``0..K-1`` or 255; values the
            format may not contain map to -1 so that loading can name them instead of training on
            them silently.
        """
        k = self.num_classes
        lut = np.full(256, -1, dtype=np.int16)
        if self.reduce_zero_label:
            lut[0] = IGNORE_INDEX
            lut[1 : k + 1] = np.arange(k)
        else:
            lut[:k] = np.arange(k)
        for void in self.void_ids:
            lut[void] = IGNORE_INDEX
        lut[IGNORE_INDEX] = IGNORE_INDEX
        return lut


def _square(n: int) -> tuple[int, int]:
    return (n, n)


def _stride(crop: int) -> tuple[int, int]:
    # Two-thirds overlap, the ratio mmseg uses for 512/341 and 768/512 windows.
    return _square(crop * 2 // 3)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="pascal_context",
            class_names=C.PASCAL_CONTEXT_CLASSES,
            palette=C.PASCAL_CONTEXT_PALETTE,
            crop_size=_square(480),
            train_scale=(2048, 520),
            test_scale=(2048, 520),
            slide_crop=_square(480),
            slide_stride=_square(320),
            reduce_zero_label=True,
        ),
        DatasetSpec(
            name="coco_stuff",
            class_names=C.COCO_STUFF_CLASSES,
            palette=C.COCO_STUFF_PALETTE,
            crop_size=_square(512),
            train_scale=(2048, 512),
            test_scale=(2048, 512),
            slide_crop=_square(512),
            slide_stride=_stride(512),
        ),
        DatasetSpec(
            name="cityscapes",
            class_names=C.CITYSCAPES_CLASSES,
            palette=C.CITYSCAPES_PALETTE,
            crop_size=_square(768),
            train_scale=(2048, 1024),
            test_scale=(2048, 1024),
            slide_crop=_square(768),
            slide_stride=_square(512),
            # The city: leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
            group_pattern=r"^leftImg8bit/[^/]+/(?P<group>[^/]+)/",
        ),
        DatasetSpec(
            name="voc_aug",
            class_names=C.VOC_CLASSES,
            palette=C.VOC_PALETTE,
            crop_size=_square(512),
            train_scale=(2048, 512),
            test_scale=(2048, 512),
            slide_crop=_square(512),
            slide_stride=_stride(512),
            train_split="trainaug",
        ),
        DatasetSpec(
            name="ade20k",
            class_names=C.ADE20K_CLASSES,
            palette=C.ADE20K_PALETTE,
            crop_size=_square(512),
            train_scale=(2048, 512),
            test_scale=(2048, 512),
            slide_crop=_square(512),
            slide_stride=_stride(512),
            reduce_zero_label=True,
        ),
        # CamVid is our CPU-budget benchmark: native 360x480 frames, small crops. The real test
        # split is held back for independent evaluation, so "test" defaults to val.
        DatasetSpec(
            name="camvid",
            class_names=C.CAMVID_CLASSES,
            palette=C.CAMVID_PALETTE,
            crop_size=_square(256),
            train_scale=(480, 360),
            test_scale=None,
            slide_crop=_square(256),
            slide_stride=_stride(256),
            void_ids=(C.CAMVID_VOID_ID,),
            # The video: the file-name prefix (0001TP_006690.png, 0006R0_f00930.png, 0016E5_07959.png).
            group_pattern=r"(?P<group>[^/_]+)_[^/]*$",
        ),
        DatasetSpec(
            name="synthetic",
            class_names=SYNTHETIC_CLASSES,
            palette=SYNTHETIC_PALETTE,
            crop_size=_square(128),
            train_scale=None,
            test_scale=None,
            slide_crop=_square(128),
            slide_stride=_square(96),
        ),
        DatasetSpec(
            name="folder",
            class_names=(),
            palette=(),
            crop_size=_square(512),
            train_scale=None,
            test_scale=None,
            slide_crop=_square(512),
            slide_stride=_stride(512),
        ),
    )
}


def read_folder_meta(root: str | Path) -> tuple[tuple[str, ...], tuple[C.RGB, ...]]:
    """Read class names and palette from a folder-layout dataset's ``meta.json``.

    Args:
        root: Dataset root holding ``meta.json``.

    Returns:
        ``(class_names, palette)``; a missing palette is filled from the VOC colour map.

    Raises:
        DatasetError: If the file is missing, unreadable or inconsistent.
    """
    path = Path(root) / "meta.json"
    if not path.is_file():
        raise DatasetError(f"{path}: missing; a folder dataset needs meta.json with its class names")
    try:
        meta = json.loads(path.read_text())
        names = tuple(str(n) for n in meta["classes"])
        raw_palette = meta.get("palette") or C.voc_colormap(len(names))
        palette = tuple((int(r), int(g), int(b)) for r, g, b in raw_palette)
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{path}: not a valid meta.json ({type(err).__name__}: {err})") from err
    if not names or len(names) > IGNORE_INDEX:
        raise DatasetError(f"{path}: needs 1..255 classes, found {len(names)}")
    if len(palette) != len(names):
        raise DatasetError(f"{path}: {len(names)} classes but {len(palette)} palette entries")
    return names, palette


def get_dataset_spec(name: str, root: str | Path | None = None) -> DatasetSpec:
    """Look up a dataset's protocol.

    Args:
        name: A key of :data:`DATASETS`.
        root: For ``folder`` only: the dataset root whose ``meta.json`` supplies the classes.

    Returns:
        The spec; for ``folder`` with a root, a copy with its class names and palette filled in.

    Raises:
        KeyError: For an unknown name (the message lists the known ones).
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    if name == "folder" and root is not None:
        names, palette = read_folder_meta(root)
        spec = replace(spec, class_names=names, palette=palette)
    return spec
