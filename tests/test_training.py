"""SegmentationModule, optimiser groups and schedule (vpnext.training)."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from tests.helpers import TINY, one_hot_module, sample_with_ids
from vpnext.data import seg_collate
from vpnext.models import VPNeXt
from vpnext.training import SegmentationModule, build_param_groups, build_scheduler, warmup_poly_factor

DEPTH = 12  # vit_tiny


def _expected_layer_id(name: str) -> int:
    """BEiT/mmseg numbering, written out independently of the code under test."""
    name = name.removeprefix("backbone.vit.")
    block = re.match(r"blocks\.(\d+)\.", name)
    if block:
        return int(block.group(1)) + 1
    if name.split(".")[0] in {"cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre"}:
        return 0
    return DEPTH + 1


def _group_of(groups: list[dict]) -> dict[int, dict]:
    return {id(p): g for g in groups for p in g["params"]}


def test_param_groups_layer_decay_and_weight_decay() -> None:
    model = VPNeXt(num_classes=4, **TINY)
    groups = build_param_groups(model, lr=2e-4, weight_decay=0.05, layer_decay=0.8, decoder_lr_mult=10.0)
    group_of = _group_of(groups)
    params = dict(model.named_parameters())
    assert len(group_of) == len(params) == sum(len(g["params"]) for g in groups)  # each param exactly once

    for name, param in params.items():
        group = group_of[id(param)]
        in_vit = name.startswith("backbone.vit.")
        scale = 0.8 ** (DEPTH + 1 - _expected_layer_id(name)) if in_vit else 10.0
        assert group["lr"] == pytest.approx(2e-4 * scale, rel=1e-12), name
        no_decay = param.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name

    # Spot checks of the formula's ends: last block 0.8x, first block 0.8^12 x, stem 0.8^13 x.
    assert group_of[id(params["backbone.vit.blocks.11.attn.qkv.weight"])]["lr_scale"] == pytest.approx(0.8)
    assert group_of[id(params["backbone.vit.blocks.0.mlp.fc1.weight"])]["lr_scale"] == pytest.approx(0.8**12)
    assert group_of[id(params["backbone.vit.pos_embed"])]["lr_scale"] == pytest.approx(0.8**13)
    assert group_of[id(params["backbone.vit.norm.weight"])]["lr_scale"] == pytest.approx(1.0)
    assert len({g["name"] for g in groups}) == len(groups)  # LearningRateMonitor needs unique names


def test_param_groups_unique_names_without_layer_decay() -> None:
    model = VPNeXt(num_classes=4, **TINY)
    groups = build_param_groups(model, lr=1e-3, layer_decay=1.0, decoder_lr_mult=1.0)
    assert len({g["name"] for g in groups}) == len(groups)
    assert all(g["lr"] == pytest.approx(1e-3) for g in groups)


def test_param_groups_unique_names_without_weight_decay() -> None:
    groups = build_param_groups(VPNeXt(num_classes=4, **TINY), lr=1e-3, weight_decay=0.0)
    assert len({g["name"] for g in groups}) == len(groups)
    assert {g["name"].rsplit(".", 1)[1] for g in groups} == {"decay", "no_decay"}
    assert all(g["weight_decay"] == 0.0 for g in groups)


def test_mask_head_class_embeddings_not_decayed() -> None:
    model = VPNeXt(num_classes=4, aux="none", head="mask_transformer", upsampler="bilinear", **TINY)
    head_names = {n for n in model.no_weight_decay() if n.startswith("head.")}
    assert head_names, "the mask head should declare its class embeddings"
    group_of = _group_of(build_param_groups(model, lr=1e-4))
    params = dict(model.named_parameters())
    for name in head_names:
        assert params[name].ndim >= 2  # otherwise the 1-D rule alone would cover it
        assert group_of[id(params[name])]["weight_decay"] == 0.0


def test_warmup_poly_factor_values() -> None:
    assert warmup_poly_factor(0, 100, 10, 1e-6) == 1e-6
    assert warmup_poly_factor(5, 100, 10, 0.0) == pytest.approx(0.5)
    assert warmup_poly_factor(10, 100, 10) == 1.0
    assert warmup_poly_factor(55, 100, 10, power=1.0) == pytest.approx(0.5)
    assert warmup_poly_factor(55, 100, 10, power=2.0) == pytest.approx(0.25)
    assert warmup_poly_factor(100, 100, 10) == 0.0
    assert warmup_poly_factor(0, 100, 0) == 1.0  # no warmup


def test_scheduler_endpoints_per_group() -> None:
    base = [1e-3, 1e-2]
    optimizer = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in base])
    scheduler = build_scheduler(optimizer, total_steps=100, warmup_steps=10, warmup_ratio=1e-6, power=1.0)
    seen = []
    for _ in range(100):  # lr used by optimiser steps 0..99
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for i, lr in enumerate(base):
        assert seen[0][i] == pytest.approx(lr * 1e-6)
        assert seen[10][i] == pytest.approx(lr)  # end of warmup: the base lr
        assert seen[99][i] == pytest.approx(lr / 90)  # last step: one poly step above zero
        assert optimizer.param_groups[i]["lr"] == pytest.approx(0.0, abs=1e-15)
        assert max(s[i] for s in seen) == pytest.approx(lr)


def test_scheduler_rejects_warmup_longer_than_run() -> None:
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match="warmup_iters"):
        build_scheduler(optimizer, total_steps=10, warmup_steps=20)


def test_validation_scores_original_resolution_and_skips_absent_classes(tmp_path) -> None:
    # Sample A: a 4x4 image of class 0 evaluated against an 8x8 label (half 0, half 1).
    label_a = torch.zeros(8, 8, dtype=torch.long)
    label_a[4:] = 1
    sample_a = sample_with_ids(torch.zeros(4, 4, dtype=torch.long), label_a)
    # Sample B: 6x6, predicts 1 on the left half and 0 on the right; label all 1 but one ignored column.
    ids_b = torch.zeros(6, 6, dtype=torch.long)
    ids_b[:, :3] = 1
    label_b = torch.ones(6, 6, dtype=torch.long)
    label_b[:, 5] = 255
    samples = [sample_a, sample_with_ids(ids_b, label_b)]
    batch = seg_collate(samples)
    assert batch["image"].shape[-2:] == (6, 6) and batch["label"].shape[-2:] == (8, 8)  # padded

    # Hand count. Class 0: A 32 correct + 32 false positive; B 12 false positive (cols 3-4).
    # Class 1: A 32 missed; B 18 correct. Class 2: absent everywhere -> no IoU.
    iou0 = 32 / (32 + 32 + 12)
    iou1 = 18 / (18 + 32 + 12)
    module = one_hot_module()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    loader = DataLoader(samples, batch_size=2, collate_fn=seg_collate)
    (logged,) = trainer.validate(module, dataloaders=loader, verbose=False)
    result = module.evaluation_results["val"]
    assert result["per_class_iou"]["class_0"] == pytest.approx(iou0)
    assert result["per_class_iou"]["class_1"] == pytest.approx(iou1)
    assert result["per_class_iou"]["class_2"] is None
    assert result["mIoU"] == pytest.approx((iou0 + iou1) / 2)
    assert logged["val/mIoU"] == pytest.approx((iou0 + iou1) / 2)
    assert "val/IoU/class_2" not in logged and logged["val/IoU/class_1"] == pytest.approx(iou1)
    # Both images were scored; without an index in their meta they cannot be told apart.
    assert result["images_evaluated"] == 2 and result["images_distinct"] is None and result["split_size"] == 2


def _indexed_split(size: int) -> list[dict]:
    samples = []
    for index in range(size):
        sample = sample_with_ids(
            torch.full((4, 4), index % 2, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long)
        )
        sample["meta"]["index"] = index
        samples.append(sample)
    return samples


COUNTS = ("images_evaluated", "images_distinct", "partial", "images_repeated")


@pytest.mark.parametrize(
    ("limit", "order", "counts"),
    [
        (1.0, [0, 1, 2], (3, 3, False, 0)),  # the whole split, each image once
        (2, [0, 1, 2], (2, 2, True, 0)),  # limit_test_batches: partial
        (1.0, [0, 1, 2, 0], (4, 3, False, 1)),  # what a padding DistributedSampler hands a process
    ],
)
def test_evaluation_counts_the_images_it_scored(tmp_path, limit, order, counts) -> None:
    module = one_hot_module()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_test_batches=limit,
        default_root_dir=tmp_path,
    )
    loader = DataLoader(_indexed_split(3), batch_size=1, sampler=order, collate_fn=seg_collate)
    if counts[-1]:
        with pytest.warns(UserWarning, match="4 images scored, 3 of them distinct: 1 repeated"):
            trainer.test(module, dataloaders=loader, verbose=False)
    else:
        trainer.test(module, dataloaders=loader, verbose=False)
    result = module.evaluation_results["test"]
    assert result["split_size"] == 3 and tuple(result[key] for key in COUNTS) == counts


def test_predict_returns_label_maps_at_original_size() -> None:
    module = one_hot_module()
    ids = torch.tensor([[2, 2], [1, 0]])
    sample = sample_with_ids(ids, torch.zeros(4, 4, dtype=torch.long))  # label only sets ori_size
    other = sample_with_ids(torch.ones(3, 5, dtype=torch.long), torch.zeros(3, 5, dtype=torch.long))
    batch = seg_collate([sample, other])
    module.eval()
    with torch.no_grad():
        maps = module.predict_step(batch, 0)
    assert [tuple(m.shape) for m in maps] == [(4, 4), (3, 5)]
    assert maps[0][0, 0] == 2 and maps[0][3, 3] == 0
    assert bool((maps[1] == 1).all())


def test_training_step_logs_every_loss_term(tmp_path) -> None:
    module = SegmentationModule(num_classes=3, aux="vcr", aux_layers=2, warmup_iters=0, **TINY)
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 3, (2, 64, 64))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    samples = [{"image": i, "label": t} for i, t in zip(images, labels, strict=True)]
    trainer.fit(module, train_dataloaders=DataLoader(samples, batch_size=2))
    logged = set(trainer.logged_metrics)
    assert {"train/loss", "train/loss_main", "train/loss_aux_0", "train/loss_aux_1"} <= logged
    value = {k: float(v) for k, v in trainer.logged_metrics.items()}
    # aux_weight 0.4 in total (aux_weighting='total', the default): 0.2 for each of the 2 maps.
    expected = value["train/loss_main"] + 0.2 * (value["train/loss_aux_0"] + value["train/loss_aux_1"])
    assert value["train/loss"] == pytest.approx(expected, rel=1e-5)
