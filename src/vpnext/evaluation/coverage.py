"""Which images of a split an evaluation scored, and how often: the proof that each counted once.

A number over "the validation split" is only that if every image of the split was scored exactly
once. Under DDP a padding sampler scores some images twice, ``limit_val_batches`` scores only some,
and neither shows in the mIoU itself. :class:`ImageTally` keeps, on every rank, one counter per
image of the split (by the ``index`` each sample carries in its ``meta``) and sums the counters
over the ranks once, when the evaluation ends; from the sum follow the number of images scored,
how many of them were distinct and whether the evaluation covered the split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["ImageTally", "coverage_flags"]


class ImageTally:
    """Per-image score counts of one evaluation of a split of ``split_size`` images.

    Samples without a usable ``index`` (outside ``0..split_size-1``, or no ``meta``) are still
    counted, in an extra slot; the number of distinct images is then unknown.

    Args:
        split_size: Number of images in the split (``None`` if unknown: counts only).
    """

    def __init__(self, split_size: int | None = None) -> None:
        self.reset(split_size)

    def reset(self, split_size: int | None) -> None:
        """Start a new evaluation of a split of ``split_size`` images."""
        self.split_size = None if split_size is None else int(split_size)
        self.counts = torch.zeros((self.split_size or 0) + 1, dtype=torch.int64)

    def update(self, metas: Sequence[Mapping[str, Any] | None]) -> None:
        """Count one scoring of each sample of a batch (one ``meta`` dict per sample)."""
        last = len(self.counts) - 1
        for meta in metas:
            index = meta.get("index") if isinstance(meta, Mapping) else None
            ok = isinstance(index, int) and not isinstance(index, bool) and 0 <= index < last
            self.counts[index if ok else last] += 1

    def compute(self, reduce_sum: Callable[[Tensor], Tensor] | None = None) -> dict[str, Any]:
        """Images scored over all ranks.

        Args:
            reduce_sum: Sums a tensor over the ranks (e.g. ``strategy.reduce(t, reduce_op="sum")``);
                ``None`` for a single process. Called exactly once, on every rank alike.

        Returns:
            ``images_evaluated`` (scorings, an image scored twice counts twice), ``images_distinct``
            (``None`` if some sample had no index) and ``split_size``.
        """
        counts = self.counts if reduce_sum is None else reduce_sum(self.counts.clone()).cpu()
        counts = counts.to(torch.int64)
        unindexed = int(counts[-1])
        return {
            "images_evaluated": int(counts.sum()),
            "images_distinct": None if unindexed else int((counts[:-1] > 0).sum()),
            "split_size": self.split_size,
        }


def coverage_flags(
    images_evaluated: int | None, images_distinct: int | None, split_size: int | None
) -> dict[str, Any]:
    """Whether an evaluation was partial and how many scorings were repeats.

    Returns:
        ``partial``: fewer distinct images scored than the split holds (``None`` if unknown);
        ``images_repeated``: scorings beyond the first of an image (``None`` if unknown).
    """
    repeated = None
    if images_evaluated is not None and images_distinct is not None:
        repeated = images_evaluated - images_distinct
    covered = images_distinct if images_distinct is not None else images_evaluated
    partial = None if covered is None or split_size is None else covered < split_size
    return {"partial": partial, "images_repeated": repeated}
