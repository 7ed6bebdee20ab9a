"""One dataset class per on-disk layout (DESIGN.md section 3); everything else lives in the spec.

Each class takes ``root`` and ``split`` (plus the options of :class:`SegmentationDataset`) and
only knows how to find the split's files. Split names accept the short forms ``train``/``val``
where the layout uses other folder names (``train2017``, ``training``, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vpnext.data.base import CheckLevel, Sample, SegmentationDataset
from vpnext.data.catalog import DatasetSpec, get_dataset_spec
from vpnext.data.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_id_list(path: Path) -> list[str]:
    """Read a split file with one sample id per line (blank lines ignored)."""
    if not path.is_file():
        raise DatasetError(f"{path}: split file is missing")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _split_dir(path: Path) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: split folder is missing")
    return path


class _RegisteredDataset(SegmentationDataset):
    """Base for datasets whose spec is fixed by their name in the registry."""

    name: str = ""
    split_aliases: dict[str, str] = {}

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        keep_original_label: bool = False,
        check_files: CheckLevel = "headers",
        spec: DatasetSpec | None = None,
    ) -> None:
        super().__init__(
            root,
            self.split_aliases.get(split, split),
            spec or get_dataset_spec(self.name),
            transform,
            keep_original_label=keep_original_label,
            check_files=check_files,
        )


class PascalContextDataset(_RegisteredDataset):
    """Pascal Context 59: ``VOC2010/{JPEGImages, SegmentationClassContext}`` with split lists in
    ``ImageSets/SegmentationContext/<split>.txt``; ``root`` is the ``VOC2010`` folder. Labels
    0..59 with 0 = background (ignored by reduce-zero-label)."""

    name = "pascal_context"

    def list_samples(self) -> list[Sample]:
        ids = read_id_list(self.root / "ImageSets" / "SegmentationContext" / f"{self.split}.txt")
        return [
            Sample(self.root / "JPEGImages" / f"{i}.jpg", self.root / "SegmentationClassContext" / f"{i}.png")
            for i in ids
        ]


class CocoStuffDataset(_RegisteredDataset):
    """COCO-Stuff 164k: ``images/<split>2017/*.jpg`` with ``annotations/<split>2017/
    <id>_labelTrainIds.png`` (171 classes, 255 ignore). Raw-id maps are converted by
    ``python -m vpnext.data.prepare coco_stuff --root ROOT``."""

    name = "coco_stuff"
    split_aliases = {"train": "train2017", "val": "val2017"}

    def list_samples(self) -> list[Sample]:
        image_dir = _split_dir(self.root / "images" / self.split)
        label_dir = self.root / "annotations" / self.split
        return [Sample(p, label_dir / f"{p.stem}_labelTrainIds.png") for p in sorted(image_dir.glob("*.jpg"))]


class CityscapesDataset(_RegisteredDataset):
    """Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` (19 classes, 255 ignore). ``labelIds``
    maps are converted by ``python -m vpnext.data.prepare cityscapes --root ROOT``."""

    name = "cityscapes"
    _image_suffix = "_leftImg8bit.png"

    def list_samples(self) -> list[Sample]:
        image_dir = _split_dir(self.root / "leftImg8bit" / self.split)
        label_dir = self.root / "gtFine" / self.split
        samples = []
        for p in sorted(image_dir.glob(f"*/*{self._image_suffix}")):
            stem = p.name[: -len(self._image_suffix)]
            samples.append(Sample(p, label_dir / p.parent.name / f"{stem}_gtFine_labelTrainIds.png"))
        return samples


class VOCAugDataset(_RegisteredDataset):
    """PASCAL VOC 2012 with SBD: ``root`` is the ``VOC2012`` folder. Split ``trainaug`` (10,582
    ids in ``ImageSets/Segmentation/trainaug.txt``, or mmseg's ``aug.txt``) reads
    ``SegmentationClassAug``; ``train``/``val`` read the palette PNGs of ``SegmentationClass``
    (palette indices are the classes; 255 = boundary, ignored)."""

    name = "voc_aug"
    _aug_splits = ("trainaug", "aug", "train_aug")

    def list_samples(self) -> list[Sample]:
        list_dir = self.root / "ImageSets" / "Segmentation"
        if self.split in self._aug_splits:
            candidates = [list_dir / f"{s}.txt" for s in (self.split, *self._aug_splits)]
            list_file = next((c for c in candidates if c.is_file()), candidates[0])
            label_dir = self.root / "SegmentationClassAug"
        else:
            list_file = list_dir / f"{self.split}.txt"
            label_dir = self.root / "SegmentationClass"
        ids = read_id_list(list_file)
        return [Sample(self.root / "JPEGImages" / f"{i}.jpg", label_dir / f"{i}.png") for i in ids]


class ADE20KDataset(_RegisteredDataset):
    """ADE20K SceneParsing: ``root`` is ``ADEChallengeData2016`` with ``images/<split>/*.jpg`` and
    ``annotations/<split>/*.png``, split ``training`` or ``validation`` (150 classes, 0 = other,
    ignored by reduce-zero-label)."""

    name = "ade20k"
    split_aliases = {"train": "training", "val": "validation"}

    def list_samples(self) -> list[Sample]:
        image_dir = _split_dir(self.root / "images" / self.split)
        label_dir = self.root / "annotations" / self.split
        return [Sample(p, label_dir / f"{p.stem}.png") for p in sorted(image_dir.glob("*.jpg"))]


class CamVidDataset(_RegisteredDataset):
    """CamVid, SegNet layout: ``<split>/*.png`` and ``<split>annot/*.png`` with the original list
    files ``<split>.txt`` of lines ``<image path> <label path>``. The lines carry the SegNet
    authors' absolute prefix (``/SegNet/CamVid/...``), so each path is resolved relative to
    ``root`` by the part after ``CamVid/`` (a line without it is taken as relative to ``root``).
    Labels 0..10; 11 = Unlabelled is ignored."""

    name = "camvid"

    @staticmethod
    def _resolve(root: Path, entry: str) -> Path:
        _, sep, tail = entry.rpartition("CamVid/")
        return root / (tail if sep else entry.lstrip("/"))

    def list_samples(self) -> list[Sample]:
        list_file = self.root / f"{self.split}.txt"
        samples = []
        for n, line in enumerate(read_id_list(list_file), start=1):
            parts = line.split()
            if len(parts) != 2:
                raise DatasetError(f"{list_file}:{n}: expected '<image path> <label path>', got {line!r}")
            samples.append(Sample(self._resolve(self.root, parts[0]), self._resolve(self.root, parts[1])))
        return samples


class FolderDataset(SegmentationDataset):
    """Any dataset in the folder layout (also what ``synthetic`` generates)::

        <root>/images/<split>/<id>.png|.jpg   RGB
        <root>/annotations/<split>/<id>.png   single-channel uint8, 0..K-1, 255 = ignore
        <root>/<split>.txt                    one id per line
        <root>/meta.json                      {"classes": [...], "palette": [[r, g, b], ...]}

    Args:
        root: Dataset root.
        split: Split name (``<root>/<split>.txt``).
        transform: See :class:`SegmentationDataset`.
        keep_original_label: See :class:`SegmentationDataset`.
        check_files: See :class:`SegmentationDataset`.
        spec: Overrides the spec; by default the ``folder`` spec with classes from ``meta.json``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        keep_original_label: bool = False,
        check_files: CheckLevel = "headers",
        spec: DatasetSpec | None = None,
    ) -> None:
        if not Path(root).is_dir():
            raise DatasetError(f"{root}: dataset root does not exist")
        super().__init__(
            root,
            split,
            spec or get_dataset_spec("folder", root),
            transform,
            keep_original_label=keep_original_label,
            check_files=check_files,
        )

    def _image_path(self, sample_id: str) -> Path:
        base = self.root / "images" / self.split / sample_id
        for suffix in IMAGE_SUFFIXES:
            if (candidate := base.with_name(base.name + suffix)).is_file():
                return candidate
        return base.with_name(base.name + IMAGE_SUFFIXES[0])  # reported as missing by check()

    def list_samples(self) -> list[Sample]:
        ids = read_id_list(self.root / f"{self.split}.txt")
        label_dir = self.root / "annotations" / self.split
        return [Sample(self._image_path(i), label_dir / f"{i}.png") for i in ids]


class ImageFolderDataset(SegmentationDataset):
    """Unlabelled images of one folder (sorted by name), for prediction.

    Args:
        root: Folder with ``.png``/``.jpg``/``.jpeg`` images.
        spec: Spec of the dataset the model was trained on (classes for visualisation).
        transform: See :class:`SegmentationDataset` (image only).
    """

    def __init__(
        self,
        root: str | Path,
        spec: DatasetSpec,
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(root, "predict", spec, transform, check_files="headers")

    def list_samples(self) -> list[Sample]:
        return [Sample(p, None) for p in sorted(self.root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]


DATASET_CLASSES: dict[str, type[SegmentationDataset]] = {
    "pascal_context": PascalContextDataset,
    "coco_stuff": CocoStuffDataset,
    "cityscapes": CityscapesDataset,
    "voc_aug": VOCAugDataset,
    "ade20k": ADE20KDataset,
    "camvid": CamVidDataset,
    "folder": FolderDataset,
    "synthetic": FolderDataset,
}
