"""Datasets, augmentation and the LightningDataModule (see docs/datasets.md)."""

from vpnext.data.base import SegmentationDataset, seg_collate
from vpnext.data.catalog import DATASETS, IGNORE_INDEX, DatasetSpec, get_dataset_spec
from vpnext.data.datamodule import SegDataModule
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

__all__ = [
    "DATASETS",
    "DATASET_CLASSES",
    "IGNORE_INDEX",
    "ADE20KDataset",
    "CamVidDataset",
    "CityscapesDataset",
    "CocoStuffDataset",
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
