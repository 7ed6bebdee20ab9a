"""Evaluation under DDP deals every image to exactly one rank, and Lightning keeps it that way."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.trainer.connectors.data_connector import _process_dataloader
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import Dataset

from vpnext.data import SegDataModule
from vpnext.data.sampling import EvalDistributedSampler

SPLIT = 7  # a multiple of neither 2 nor 3


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("size", [8, 9, 13, 101])
def test_ranks_hold_disjoint_parts_of_the_split(world: int, size: int) -> None:
    parts = [list(EvalDistributedSampler(range(size), world, rank)) for rank in range(world)]
    assert sorted(i for part in parts for i in part) == list(range(size))
    assert [len(EvalDistributedSampler(range(size), world, r)) for r in range(world)] == [
        len(p) for p in parts
    ]
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_order_is_fixed_and_epochs_do_not_reshuffle() -> None:
    sampler = EvalDistributedSampler(range(SPLIT), 3, 1)
    assert list(sampler) == [1, 4]
    sampler.set_epoch(5)
    assert list(sampler) == [1, 4]


def test_split_smaller_than_world_is_refused() -> None:
    # A rank without a batch would skip the evaluation loop while the others wait for it.
    with pytest.raises(ValueError, match="2 image\\(s\\), fewer than the 3 processes"):
        EvalDistributedSampler(range(2), 3, 0)


class IndexedSplit(Dataset):
    """A stand-in split: tiny samples that carry their index, as the real datasets do."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        return {
            "image": torch.zeros(3, 2, 2),
            "label": torch.zeros(2, 2, dtype=torch.long),
            "meta": {"index": index},
        }


STAGES = [
    (TrainerFn.VALIDATING, RunningStage.VALIDATING, "val_dataloader"),
    (TrainerFn.FITTING, RunningStage.VALIDATING, "val_dataloader"),  # validation inside fit
    (TrainerFn.TESTING, RunningStage.TESTING, "test_dataloader"),
    (TrainerFn.PREDICTING, RunningStage.PREDICTING, "predict_dataloader"),
]


@pytest.mark.parametrize("use_distributed_sampler", [True, False])
@pytest.mark.parametrize(("fn", "stage", "loader"), STAGES)
@pytest.mark.parametrize(("world", "batch_size"), [(2, 1), (3, 1), (3, 2)])
def test_lightning_keeps_the_sampler_in_every_evaluation_stage(
    world: int,
    batch_size: int,
    fn: TrainerFn,
    stage: RunningStage,
    loader: str,
    use_distributed_sampler: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What each rank's loader yields after Lightning prepared it (where it injects its own sampler).
    # Setting a rank also sets Lightning's process-wide rank_zero_only.rank: restored afterwards.
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    seen = []
    for rank in range(world):
        trainer = L.Trainer(
            accelerator="cpu",
            strategy="ddp",
            devices=world,
            use_distributed_sampler=use_distributed_sampler,
            logger=False,
            enable_checkpointing=False,
        )
        trainer.strategy.cluster_environment.set_global_rank(rank)
        datamodule = SegDataModule(num_workers=0, val_batch_size=batch_size)
        datamodule.trainer = trainer
        datamodule.val_set = datamodule.test_set = datamodule.predict_set = IndexedSplit(SPLIT)
        prepared = _process_dataloader(trainer, fn, stage, getattr(datamodule, loader)())
        seen += [meta["index"] for batch in prepared for meta in batch["meta"]]
    assert sorted(seen) == list(range(SPLIT))


def test_single_process_keeps_the_plain_loader() -> None:
    datamodule = SegDataModule(num_workers=0)
    datamodule.val_set = IndexedSplit(SPLIT)
    loader = datamodule.val_dataloader()
    assert not isinstance(loader.sampler, EvalDistributedSampler)
    assert [batch["meta"][0]["index"] for batch in loader] == list(range(SPLIT))
