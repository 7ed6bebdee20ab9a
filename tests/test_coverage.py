"""``ImageTally``: how many images an evaluation scored, how many distinct, summed over ranks once."""

from __future__ import annotations

import torch

from vpnext.evaluation import ImageTally, coverage_flags


def metas(*indices: int | None) -> list[dict | None]:
    return [None if i is None else {"index": i} for i in indices]


def test_counts_each_scoring_and_the_distinct_images() -> None:
    tally = ImageTally(5)
    tally.update(metas(0, 1))
    tally.update(metas(1, 4))  # image 1 scored twice
    assert tally.compute() == {"images_evaluated": 4, "images_distinct": 3, "split_size": 5}


def test_ranks_are_summed_by_one_reduction() -> None:
    # Rank 0 scored 0, 2, 4 and rank 1 scored 1, 3, 0 (the padding a DistributedSampler adds).
    rank0, rank1 = ImageTally(5), ImageTally(5)
    rank0.update(metas(0, 2, 4))
    rank1.update(metas(1, 3, 0))
    calls = []

    def reduce_sum(t: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return t + rank1.counts

    assert rank0.compute(reduce_sum) == {"images_evaluated": 6, "images_distinct": 5, "split_size": 5}
    assert len(calls) == 1
    assert rank0.counts.tolist() == [1, 0, 1, 0, 1, 0]  # the reduction works on a copy


def test_samples_without_index_are_counted_but_not_told_apart() -> None:
    tally = ImageTally(3)
    tally.update([*metas(0, None), {"image_path": "x.png"}, {"index": 7}])
    assert tally.compute() == {"images_evaluated": 4, "images_distinct": None, "split_size": 3}
    unsized = ImageTally(None)
    unsized.update(metas(0, 1))
    assert unsized.compute() == {"images_evaluated": 2, "images_distinct": None, "split_size": None}


def test_reset_starts_a_new_split() -> None:
    tally = ImageTally(3)
    tally.update(metas(0, 1, 2))
    tally.reset(2)
    tally.update(metas(1))
    assert tally.compute() == {"images_evaluated": 1, "images_distinct": 1, "split_size": 2}


def test_coverage_flags() -> None:
    assert coverage_flags(7, 7, 7) == {"partial": False, "images_repeated": 0}
    assert coverage_flags(3, 3, 7) == {"partial": True, "images_repeated": 0}
    assert coverage_flags(8, 7, 7) == {"partial": False, "images_repeated": 1}
    assert coverage_flags(8, 6, 7) == {"partial": True, "images_repeated": 2}
    assert coverage_flags(7, None, 7) == {"partial": False, "images_repeated": None}
    assert coverage_flags(7, 7, None) == {"partial": None, "images_repeated": 0}
