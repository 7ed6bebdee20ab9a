"""A training data stream that a resumed run continues exactly where the interrupted one stopped.

Two things make the stream a pure function of the seed, the epoch and the position in it, so that
nothing has to be carried over from the interrupted process except two numbers:

* **Order.** :class:`ResumableSampler` shuffles each epoch with ``torch.randperm`` seeded by
  ``seed + epoch`` (as ``DistributedSampler`` does, and it is one, so Lightning leaves it in place
  under DDP and splits nothing twice) and can start an epoch after its first ``k`` samples.
* **Augmentation.** It yields ``(epoch, index)`` pairs; :class:`EpochSeededDataset` reseeds the
  augmentation pipeline from ``(seed, epoch, index)`` before each sample. A crop therefore does
  not depend on which worker draws it, how many workers there are, or what ran before.
  With mixing on (:mod:`vpnext.data.mixing`), the partner crop and the mix are drawn from the
  same triple, so they are part of the pure function too.

The data module stores ``{"epoch", "batches"}`` (batches of the current epoch already trained
on, from Lightning's progress counters) in every checkpoint and, on resume, builds the sampler
with :meth:`ResumableSampler.resume_at`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
from torch.utils.data import Dataset, DistributedSampler

from vpnext.data.mixing import MIX_MODES, MixMode, mix_pair

__all__ = ["EpochSeededDataset", "ResumableSampler", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` (a 32-bit int)."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(1)[0])


class ResumableSampler(DistributedSampler):
    """Shuffled training indices per epoch, yielded as ``(epoch, index)``; can resume mid-epoch.

    Args:
        dataset: The training split (only its length is used).
        num_replicas: Data-parallel world size.
        rank: This process's rank.
        seed: Shuffle seed; epoch ``e`` uses ``seed + e``.
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, samples: int) -> None:
        """Make the next pass over ``epoch`` skip its first ``samples`` indices (of this rank)."""
        self._resume = (int(epoch), int(samples))

    def __iter__(self) -> Iterator[Any]:  # (epoch, index) pairs
        indices = list(super().__iter__())
        skip = 0
        if self._resume is not None:
            epoch, samples = self._resume
            self._resume = None
            if epoch == self.epoch:
                skip = samples
        return iter([(self.epoch, index) for index in indices[skip:]])


class EpochSeededDataset(Dataset):
    """Wraps a dataset whose ``transform`` has ``set_random_seed`` (albumentations' ``Compose``).

    ``dataset[(epoch, index)]`` reseeds the transform with :func:`sample_seed` and returns
    ``dataset[index]``; a plain ``index`` counts as epoch 0. With ``mix`` on, a share ``mix_prob``
    of the samples is mixed with a partner crop: another sample of the split (any index, the same
    one included), augmented with a seed of its own, both drawn from ``(seed, epoch, index)``;
    ``meta["mix_partner"]`` names the partner's index (``None``: not mixed).

    Args:
        dataset: The training dataset.
        seed: Base augmentation seed.
        mix: ``"none"``, ``"classmix"`` or ``"cutmix"`` (:mod:`vpnext.data.mixing`).
        mix_prob: Probability that a sample is mixed.
    """

    def __init__(self, dataset: Dataset, seed: int, mix: MixMode = "none", mix_prob: float = 0.5) -> None:
        if mix not in MIX_MODES:
            raise ValueError(f"mix must be one of {', '.join(MIX_MODES)}, got {mix!r}")
        if not 0.0 <= mix_prob <= 1.0:
            raise ValueError(f"mix_prob must lie in [0, 1], got {mix_prob}")
        self.dataset = dataset
        self.seed = int(seed)
        self.mix, self.mix_prob = mix, float(mix_prob)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        sample = self._draw(index, sample_seed(self.seed, epoch, index))
        if self.mix == "none":
            return sample
        # A stream of its own (a fourth entry), so turning mixing on leaves every crop as it was.
        rng = np.random.default_rng([self.seed % 2**32, epoch, index, 1])
        sample["meta"] = {**sample["meta"], "mix_partner": None}
        if rng.random() >= self.mix_prob:
            return sample
        partner_index = int(rng.integers(len(self)))
        partner = self._draw(partner_index, int(rng.integers(2**32)))
        sample["image"], sample["label"] = mix_pair(
            self.mix, sample["image"], sample["label"], partner["image"], partner["label"], rng
        )
        sample["meta"]["mix_partner"] = partner_index
        return sample

    def _draw(self, index: int, transform_seed: int) -> Any:
        transform = getattr(self.dataset, "transform", None)
        if transform is not None and hasattr(transform, "set_random_seed"):
            transform.set_random_seed(transform_seed)
        return self.dataset[index]
