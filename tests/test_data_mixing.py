"""ClassMix and CutMix of training crops (vpnext.data.mixing) and their place in the stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from vpnext.data import SegDataModule
from vpnext.data.catalog import IGNORE_INDEX
from vpnext.data.mixing import class_mix, cut_mix, mix_pair
from vpnext.data.resume import EpochSeededDataset
from vpnext.errors import UserError


def _crop(fill: float, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose every pixel tells its source: channel 0 = fill, channel 1 = its label."""
    image = torch.stack([torch.full(label.shape, fill), label.float(), torch.zeros(label.shape)])
    return image, label


def _pair() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    label = torch.randint(0, 3, (12, 16), generator=generator)
    partner_label = torch.randint(3, 7, (12, 16), generator=generator)
    partner_label[:2] = IGNORE_INDEX
    return (*_crop(1.0, label), *_crop(2.0, partner_label))


def _assert_pixels_keep_their_labels(image: torch.Tensor, label: torch.Tensor) -> None:
    # channel 1 holds the label each pixel came with; the pasted label must be that one
    known = label != IGNORE_INDEX
    assert torch.equal(image[1][known], label[known].float())


def test_class_mix_pastes_half_of_the_partners_classes() -> None:
    image, label, p_image, p_label = _pair()
    mixed_image, mixed_label = class_mix(image, label, p_image, p_label, np.random.default_rng(0))
    from_partner = mixed_image[0] == 2.0
    pasted = set(torch.unique(p_label[from_partner]).tolist())
    assert len(pasted) == 2  # 4 classes present in the partner (3..6): half of them
    assert pasted <= {3, 4, 5, 6}
    # exactly the pixels of the chosen classes come from the partner, ignored pixels never do
    assert torch.equal(from_partner, torch.isin(p_label, torch.tensor(sorted(pasted))))
    assert not from_partner[:2].any()
    _assert_pixels_keep_their_labels(mixed_image, mixed_label)
    assert torch.equal(mixed_label[~from_partner], label[~from_partner])
    assert torch.equal(image[0], torch.ones(12, 16))  # the inputs are left as they were


def test_class_mix_rounds_an_odd_count_up_and_skips_an_unlabelled_partner() -> None:
    image, label, p_image, _ = _pair()
    three = torch.tensor([3, 4, 5]).repeat(12, 6)[:, :16]
    _, mixed_label = class_mix(image, label, p_image, three, np.random.default_rng(1))
    assert len(set(torch.unique(mixed_label).tolist()) & {3, 4, 5}) == 2
    ignored = torch.full_like(label, IGNORE_INDEX)
    same_image, same_label = class_mix(image, label, p_image, ignored, np.random.default_rng(1))
    assert torch.equal(same_image, image) and torch.equal(same_label, label)


def test_cut_mix_pastes_one_box_of_the_partner() -> None:
    image, label, p_image, p_label = _pair()
    areas = []
    for seed in range(20):
        mixed_image, mixed_label = cut_mix(image, label, p_image, p_label, np.random.default_rng(seed))
        rows, cols = torch.nonzero(mixed_image[0] == 2.0, as_tuple=True)
        if rows.numel():
            box = mixed_image[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert torch.all(box == 2.0)  # one solid rectangle
            areas.append(rows.numel() / label.numel())
        _assert_pixels_keep_their_labels(mixed_image, mixed_label)
    assert min(areas) < 0.3 and max(areas) > 0.6  # a uniform share of the crop


def test_mix_pair_none_and_size_mismatch() -> None:
    image, label, p_image, p_label = _pair()
    assert mix_pair("none", image, label, p_image, p_label, np.random.default_rng(0))[0] is image
    with pytest.raises(ValueError, match="different sizes"):
        mix_pair("classmix", image, label, p_image[:, :6], p_label[:6], np.random.default_rng(0))


class _Transform:
    """Stands in for albumentations' Compose: its seed decides a sample's 'augmentation'."""

    def __init__(self) -> None:
        self.seed = 0

    def set_random_seed(self, seed: int) -> None:
        self.seed = seed


class _Frames(Dataset):
    """Frame i: image channel 0 = i, a label of class i % 5 with a seed-dependent stripe of 9."""

    def __init__(self, count: int = 6) -> None:
        self.count, self.transform = count, _Transform()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        label = torch.full((8, 8), index % 5)
        label[self.transform.seed % 8] = 9
        image, label = _crop(float(index), label)
        return {"image": image, "label": label, "meta": {"index": index}}


def test_stream_mixes_a_share_of_samples_reproducibly() -> None:
    stream = EpochSeededDataset(_Frames(), seed=3, mix="classmix", mix_prob=0.5)
    keys = [(epoch, index) for epoch in range(4) for index in range(6)]
    first = [stream[key] for key in keys]
    again = [stream[key] for key in reversed(keys)][::-1]  # another order: the same samples
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["image"], b["image"]) and a["meta"] == b["meta"]
    partners = [s["meta"]["mix_partner"] for s in first]
    assert 6 <= sum(p is not None for p in partners) <= 18
    plain = EpochSeededDataset(_Frames(), seed=3)
    for key, sample in zip(keys, first, strict=True):
        own = plain[key]
        assert "mix_partner" not in own["meta"]
        if sample["meta"]["mix_partner"] is None:  # unmixed samples are the crops without mixing
            assert torch.equal(sample["image"], own["image"])
        else:
            sources = set(torch.unique(sample["image"][0]).tolist())
            assert sources <= {float(key[1]), float(sample["meta"]["mix_partner"])}
            _assert_pixels_keep_their_labels(sample["image"], sample["label"])
    never = EpochSeededDataset(_Frames(), seed=3, mix="cutmix", mix_prob=0.0)
    assert never[(0, 1)]["meta"]["mix_partner"] is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"mix": "mixup"}, "mix must be one of"), ({"mix": "cutmix", "mix_prob": 1.5}, "mix_prob")],
    ids=["unknown-mode", "probability-above-one"],
)
def test_stream_refuses_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EpochSeededDataset(_Frames(), seed=0, **kwargs)


def test_datamodule_mixes_the_training_batches_only(tmp_path: Path) -> None:
    dm = SegDataModule(
        "synthetic",
        root=str(tmp_path),
        crop_size=32,
        batch_size=4,
        num_workers=0,
        mix="cutmix",
        mix_prob=1.0,
        synthetic_kwargs={"num_train": 4, "num_val": 1, "image_size": 32},
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert all(meta["mix_partner"] is not None for meta in batch["meta"])
    val = next(iter(dm.val_dataloader()))
    assert "mix_partner" not in val["meta"][0]
    with pytest.raises(UserError, match="mix_prob"):
        SegDataModule("synthetic", mix_prob=-0.1)
