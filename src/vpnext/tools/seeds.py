"""Runs that differ only in their seed: grouping, mean ± std, and paired comparisons over seeds.

A table row of ``vpnext report`` holds one *configuration*: every run whose hyperparameters and
setting agree, whatever ``seed_everything`` it ran with. :class:`SeedGroup` summarises them
(mean, sample standard deviation, n, mean wall time and inference GMACs).

A paired comparison (:func:`paired`) matches two configurations seed by seed (the same seed means
the same initialisation and data order, so the seed's own luck cancels) and reports the mean of
the per-seed differences with its sample standard deviation and a two-sided 95% Student-t
confidence interval over the n pairs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

__all__ = ["PairedDifference", "SeedGroup", "paired", "t_quantile_975"]

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (standard table values).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom (normal's 1.960 past 30)."""
    if dof < 1:
        raise ValueError("a confidence interval needs at least 2 values")
    return _T975[dof - 1] if dof <= len(_T975) else 1.960


@dataclass(frozen=True)
class SeedGroup:
    """Runs of one configuration that differ only in their seed.

    Attributes:
        values: Metric per run (fractions), in ``seeds`` order.
        seeds: The seed of each run (``None`` if the run did not record one).
        runs: Whatever the caller keeps per run (e.g. its ``results.json`` path), same order.
        wall_times: Wall-clock seconds per run, where recorded.
        gmacs: Inference GMACs of the configuration, if any run recorded it.
    """

    values: tuple[float, ...]
    seeds: tuple[int | None, ...]
    runs: tuple[Any, ...]
    wall_times: tuple[float, ...] = ()
    gmacs: float | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1), ``None`` for a single run."""
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def mean_wall_time(self) -> float | None:
        return statistics.fmean(self.wall_times) if self.wall_times else None

    def by_seed(self) -> dict[int, float]:
        """Metric per recorded seed (runs without a seed, or a repeated seed's later runs, left out)."""
        found: dict[int, float] = {}
        for seed, value in zip(self.seeds, self.values, strict=True):
            if seed is not None and seed not in found:
                found[seed] = value
        return found

    def format(self, scale: float = 100.0, digits: int = 2) -> str:
        """``68.83`` for one run, ``68.83 ± 0.41 (n=3)`` for several."""
        mean = f"{scale * self.mean:.{digits}f}"
        if self.n == 1:
            return mean
        return f"{mean} ± {scale * self.std:.{digits}f} (n={self.n})"  # type: ignore[operator]


@dataclass(frozen=True)
class PairedDifference:
    """Per-seed differences ``a - b`` between two configurations.

    Attributes:
        differences: One difference per seed both configurations ran with, in seed order.
        seeds: Those seeds.
    """

    differences: tuple[float, ...]
    seeds: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.differences)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.differences) if self.n > 1 else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        """Two-sided 95% t interval of the mean difference, ``None`` below 2 pairs."""
        if self.n < 2:
            return None
        half = t_quantile_975(self.n - 1) * self.std / math.sqrt(self.n)  # type: ignore[operator]
        return self.mean - half, self.mean + half

    @property
    def wins(self) -> int:
        """Seeds on which ``a`` scored higher than ``b``."""
        return sum(d > 0 for d in self.differences)

    def format(self, scale: float = 100.0, digits: int = 2) -> str:
        """``+0.52 ± 0.30, 95% CI [-0.22, +1.26], a higher on 2/3 seeds`` (points of mIoU)."""
        text = f"{scale * self.mean:+.{digits}f}"
        if self.std is not None:
            low, high = self.ci95  # type: ignore[misc]
            text += (
                f" ± {scale * self.std:.{digits}f}, 95% CI [{scale * low:+.{digits}f}, "
                f"{scale * high:+.{digits}f}]"
            )
        return f"{text}, higher on {self.wins}/{self.n} seeds"


def paired(a: SeedGroup, b: SeedGroup) -> PairedDifference | None:
    """Differences ``a - b`` on the seeds both groups ran; ``None`` if they share no seed."""
    a_seeds, b_seeds = a.by_seed(), b.by_seed()
    common = sorted(set(a_seeds) & set(b_seeds))
    if not common:
        return None
    return PairedDifference(tuple(a_seeds[s] - b_seeds[s] for s in common), tuple(common))
