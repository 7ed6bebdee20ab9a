"""What evaluation and inference need to know about a run's data, without Lightning.

:class:`DataSettings` resolves, from the arguments of :class:`~vpnext.data.SegDataModule` (the
dataset's defaults filling what is not given), the classes, palette, training crop, test resize,
sliding window and input normalisation. :class:`~vpnext.data.SegDataModule` is built on it, and
:class:`~vpnext.inference.Segmenter` rebuilds it from a checkpoint's data hyperparameters, so both
read the same values, and labelling an image needs no Lightning.
"""

from __future__ import annotations

import functools
from pathlib import Path

from vpnext.data.catalog import IGNORE_INDEX, DatasetSpec, get_dataset_spec
from vpnext.data.classes import RGB
from vpnext.data.datasets import DATASET_CLASSES
from vpnext.data.errors import DatasetError
from vpnext.plain import pair

__all__ = ["DataSettings"]


class DataSettings:
    """The resolved data settings of a run (see the module docstring).

    Args:
        dataset: Registry name (:data:`vpnext.data.catalog.DATASETS`).
        root: Dataset root; for ``folder`` its ``meta.json`` gives the classes.
        crop_size, train_scale, test_scale, test_resize, slide_crop, slide_stride, mean, std,
        normalize_for: As in :class:`~vpnext.data.SegDataModule`.
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        crop_size: int | tuple[int, int] | None = None,
        train_scale: tuple[int, int] | None = None,
        test_scale: tuple[int, int] | None = None,
        test_resize: bool = True,
        slide_crop: int | tuple[int, int] | None = None,
        slide_stride: int | tuple[int, int] | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        normalize_for: str | None = None,
    ) -> None:
        if dataset not in DATASET_CLASSES:
            raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(DATASET_CLASSES))}")
        if dataset not in ("synthetic",) and root is None:
            raise ValueError(f"dataset {dataset!r} needs a root folder (see docs/datasets.md)")
        if dataset == "folder" and root is not None and not Path(root).is_dir():
            raise DatasetError(f"{root}: dataset root of 'folder' does not exist")
        self.dataset_name = dataset
        # For folder datasets the classes come from meta.json, so they are known right away and
        # LightningCLI can link num_classes to the model at instantiation.
        self.spec: DatasetSpec = get_dataset_spec(dataset, root if dataset == "folder" else None)
        self._crop_size = pair(crop_size) if crop_size is not None else self.spec.crop_size
        self._train_scale = tuple(train_scale) if train_scale is not None else self.spec.train_scale
        scale = tuple(test_scale) if test_scale is not None else self.spec.test_scale
        self._test_scale = scale if test_resize else None
        self._slide_crop = pair(slide_crop) if slide_crop is not None else self.spec.slide_crop
        self._slide_stride = pair(slide_stride) if slide_stride is not None else self.spec.slide_stride
        self._mean_arg, self._std_arg, self._normalize_for = mean, std, normalize_for
        super().__init__()  # the next class of a subclass (SegDataModule: LightningDataModule)

    @property
    def mean(self) -> tuple[float, float, float]:
        """The normalisation mean in use (given, else ``normalize_for``'s, else ImageNet's)."""
        return self._normalization[0]

    @property
    def std(self) -> tuple[float, float, float]:
        """The normalisation std in use (given, else ``normalize_for``'s, else ImageNet's)."""
        return self._normalization[1]

    @functools.cached_property
    def _normalization(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        from vpnext.data.transforms import IMAGENET_MEAN, IMAGENET_STD
        from vpnext.models.backbone import backbone_normalization  # timm: only when asked

        default = (IMAGENET_MEAN, IMAGENET_STD)
        if self._normalize_for is not None and (self._mean_arg is None or self._std_arg is None):
            default = backbone_normalization(self._normalize_for)  # type: ignore[assignment]
        mean = default[0] if self._mean_arg is None else self._mean_arg
        std = default[1] if self._std_arg is None else self._std_arg
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """Number of evaluated classes."""
        return self.spec.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in train-id order."""
        return self.spec.class_names

    @property
    def palette(self) -> tuple[RGB, ...]:
        """One RGB colour per class."""
        return self.spec.palette

    @property
    def ignore_index(self) -> int:
        """Label value excluded from loss and metrics (255)."""
        return IGNORE_INDEX

    @property
    def crop_size(self) -> tuple[int, int]:
        """Training crop ``(height, width)``."""
        return self._crop_size

    @property
    def test_scale(self) -> tuple[int, int] | None:
        """Keep-ratio ``(long, short)`` resize applied to val/test images (``None``: native)."""
        return self._test_scale  # type: ignore[return-value]

    @property
    def slide_crop(self) -> tuple[int, int] | None:
        """Sliding-window size for single-scale testing (``None``: whole image)."""
        return self._slide_crop

    @property
    def slide_stride(self) -> tuple[int, int] | None:
        """Sliding-window stride for single-scale testing."""
        return self._slide_stride
