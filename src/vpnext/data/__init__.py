"""Datasets, augmentation and the LightningDataModule (see docs/datasets.md).

:class:`SegDataModule` is loaded on first use (``from vpnext.data import SegDataModule`` works as
usual), so that the datasets and :class:`DataSettings` are importable without Lightning.
"""

from typing import Any

from vpnext.data.base import SegmentationDataset, seg_collate
from vpnext.data.catalog import DATASETS, IGNORE_INDEX, DatasetSpec, get_dataset_spec
from vpnext.data.datasets import (
    DATASET_CLASSES,
    ADE20KDataset,
    CamVidDataset,
    CityscapesDataset,
    CocoStuffDataset,
    FolderDataset,
    ImageFolderDataset,
    PascalContextDataset,
    VOCAugDataset,
)
from vpnext.data.errors import DatasetError
from vpnext.data.settings import DataSettings

__all__ = [
    "DATASETS",
    "DATASET_CLASSES",
    "IGNORE_INDEX",
    "ADE20KDataset",
    "CamVidDataset",
    "CityscapesDataset",
    "CocoStuffDataset",
    "DataSettings",
    "DatasetError",
    "DatasetSpec",
    "FolderDataset",
    "ImageFolderDataset",
    "PascalContextDataset",
    "SegDataModule",
    "SegmentationDataset",
    "VOCAugDataset",
    "get_dataset_spec",
    "seg_collate",
]


def __getattr__(name: str) -> Any:
    if name == "SegDataModule":
        from vpnext.data.datamodule import SegDataModule  # Lightning: only when asked for

        return SegDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
