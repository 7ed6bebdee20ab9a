"""Distributed evaluation that scores every image of a split exactly once.

``torch.utils.data.DistributedSampler`` (what Lightning puts into a val/test loader under DDP) gives
every rank ``ceil(N / W)`` indices and fills the shortfall by repeating images from the start of the
split, so with ``N % W != 0`` some images are scored twice and the synced mIoU depends on the
number of processes. :class:`EvalDistributedSampler` deals the indices out without padding: rank
``r`` of ``W`` gets ``r, r + W, r + 2W, ...``, so the ranks hold disjoint sets whose union is the
split and their lengths differ by at most one. Evaluation needs no equal lengths: metric states
are only synced once, at the end of the epoch.

It subclasses ``DistributedSampler`` so that Lightning's ``use_distributed_sampler`` leaves it in
place (Lightning only injects its own sampler into loaders whose sampler is not one already).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler

__all__ = ["EvalDistributedSampler"]


class EvalDistributedSampler(DistributedSampler):
    """Split indices ``0..N-1`` over ``num_replicas`` ranks in order, each index on one rank.

    Args:
        dataset: The split; only its length is used.
        num_replicas: Number of processes sharing the split (the data-parallel world size).
        rank: This process's rank in ``0..num_replicas-1``.

    Raises:
        ValueError: If the split has fewer samples than there are ranks: a rank without a single
            batch skips Lightning's evaluation loop and the others would wait for it forever.
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        size = len(dataset)
        if size < num_replicas:
            raise ValueError(
                f"the evaluation split has {size} image(s), fewer than the {num_replicas} processes "
                "evaluating it; evaluate it on at most as many devices as it has images"
            )
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        # DistributedSampler's padded figures, replaced by the unpadded ones.
        self.total_size = size
        self.num_samples = len(range(rank, size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
