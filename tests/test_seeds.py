"""Seed groups and paired comparisons (``vpnext.tools.seeds``) against hand-computed values."""

from __future__ import annotations

import math

import pytest

from vpnext.tools.seeds import SeedGroup, paired, t_quantile_975


def test_group_mean_sample_std_and_format() -> None:
    group = SeedGroup((0.40, 0.42, 0.47), (0, 1, 2), ("a", "b", "c"), (60.0, 120.0), 3.5)
    assert group.mean == pytest.approx(0.43)
    assert group.std == pytest.approx(math.sqrt(13) / 100)  # deviations 3, 1, 4 points; n - 1 = 2
    assert group.format() == "43.00 ± 3.61 (n=3)"
    assert group.mean_wall_time == 90.0
    assert SeedGroup((0.5,), (0,), ("a",)).format() == "50.00"


def test_paired_uses_only_common_seeds() -> None:
    a = SeedGroup((0.50, 0.60, 0.70), (0, 1, 5), ("",) * 3)
    b = SeedGroup((0.45, 0.50, 0.10), (0, 1, 9), ("",) * 3)
    diff = paired(a, b)
    assert diff.seeds == (0, 1) and diff.differences == pytest.approx((0.05, 0.10))
    low, high = diff.ci95
    half = 12.706 * diff.std / math.sqrt(2)
    assert (low, high) == pytest.approx((0.075 - half, 0.075 + half))
    assert diff.wins == 2
    assert paired(a, SeedGroup((0.1,), (3,), ("",))) is None


def test_t_quantiles() -> None:
    assert t_quantile_975(2) == 4.303 and t_quantile_975(30) == 2.042 and t_quantile_975(100) == 1.960
    with pytest.raises(ValueError):
        t_quantile_975(0)
