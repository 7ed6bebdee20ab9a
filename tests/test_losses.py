"""Losses against hand-computed values, ignore handling and the weighted total."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vpnext.losses import SegmentationLoss, ce_loss, mask_all_loss, mask_loss, naive_align_loss
from vpnext.models.outputs import VPNeXtOutput

# One image, 2 classes, 2x2 pixels; the bottom-right pixel is ignored.
LOGITS = torch.tensor([[[[2.0, -1.0], [0.5, 3.0]], [[-1.0, 1.5], [0.0, -2.0]]]])
TARGET = torch.tensor([[[0, 1], [1, 255]]])


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _focal_term(x: float, t: int, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = _sigmoid(x)
    bce = -math.log(p) if t else -math.log(1.0 - p)
    p_t = p if t else 1.0 - p
    alpha_t = alpha if t else 1.0 - alpha
    return alpha_t * bce * (1.0 - p_t) ** gamma


def _bce(x: float, t: int) -> float:
    return -math.log(_sigmoid(x)) if t else -math.log(1.0 - _sigmoid(x))


def _dice(probs: list[float], mask: list[int]) -> float:
    inter = sum(p * t for p, t in zip(probs, mask, strict=True))
    return 1 - (2 * inter + 1) / (sum(probs) + sum(mask) + 1)


def test_mask_loss_with_absent_classes_matches_hand_computation() -> None:
    """The cited form: focal + dice on present masks / their number, BCE presence on the max logit.

    Two images, 3 classes, 1x3 pixels each. Image 0: labels (0, 1, ignore): class 2 absent.
    Image 1: labels (2, 2, 2): classes 0 and 1 absent. So 3 present masks in the batch.
    """
    logits = torch.tensor(
        [
            [[[1.0, -2.0, 9.0]], [[-0.5, 0.7, 9.0]], [[0.3, -1.2, 9.0]]],  # ignored pixel: huge logits
            [[[-1.5, 0.4, -0.2]], [[2.0, -3.0, 0.1]], [[0.8, 1.1, -0.4]]],
        ]
    )
    target = torch.tensor([[[0, 1, 255]], [[2, 2, 2]]])
    # Per present mask: focal = mean over the image's valid pixels; dice over the same pixels.
    x = logits.tolist()
    img0 = {k: x[0][k][0][:2] for k in range(3)}  # 2 valid pixels
    img1 = {k: x[1][k][0] for k in range(3)}  # 3 valid pixels
    present = [(img0[0], [1, 0]), (img0[1], [0, 1]), (img1[2], [1, 1, 1])]
    focal = [sum(_focal_term(v, t) for v, t in zip(xs, m, strict=True)) / len(xs) for xs, m in present]
    dice = [_dice([_sigmoid(v) for v in xs], m) for xs, m in present]
    # Presence: per image and class, BCE of the largest valid logit against "class in image".
    presence = (
        _bce(max(img0[0]), 1)
        + _bce(max(img0[1]), 1)
        + _bce(max(img0[2]), 0)
        + _bce(max(img1[0]), 0)
        + _bce(max(img1[1]), 0)
        + _bce(max(img1[2]), 1)
    ) / 6

    got = lambda **w: mask_loss(logits, target, **w).item()  # noqa: E731
    assert got(focal_weight=1.0, dice_weight=0.0, presence_weight=0.0) == pytest.approx(
        sum(focal) / 3, rel=1e-6
    )
    assert got(focal_weight=0.0, dice_weight=1.0, presence_weight=0.0) == pytest.approx(
        sum(dice) / 3, rel=1e-6
    )
    assert got(focal_weight=0.0, dice_weight=0.0, presence_weight=1.0) == pytest.approx(presence, rel=1e-6)
    expected = (20 * sum(focal) + sum(dice)) / 3 + presence  # MaskFormer weights 20 / 1 / 1
    assert mask_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # Over all masks (mask_all) the absent classes' empty masks would count in dice too.
    assert mask_all_loss(logits, target).item() != pytest.approx(expected, rel=1e-3)


def test_mask_loss_punishes_predicting_an_absent_class() -> None:
    """Raising an absent class's logit at one pixel raises the loss; with dice on present masks
    only, the presence term is what says so (without it the loss would not move)."""
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    clean = torch.full((1, 3, 4, 4), -4.0)
    clean[:, 0] = 4.0
    wrong = clean.clone()
    wrong[0, 2, 1, 1] = 4.0  # class 2, absent, predicted at one pixel
    assert mask_loss(wrong, target).item() > mask_loss(clean, target).item() + 1.0
    no_presence = dict(presence_weight=0.0)
    assert mask_loss(wrong, target, **no_presence).item() == mask_loss(clean, target, **no_presence).item()


def test_mask_all_loss_matches_hand_computation() -> None:
    # Valid pixels (logit class 0, logit class 1, label): (2, -1, 0), (-1, 1.5, 1), (0.5, 0, 1).
    focal = (
        _focal_term(2.0, 1)
        + _focal_term(-1.0, 0)
        + _focal_term(-1.0, 0)
        + _focal_term(1.5, 1)
        + _focal_term(0.5, 0)
        + _focal_term(0.0, 1)
    ) / 6  # 3 valid pixels x 2 classes
    p0 = [_sigmoid(2.0), _sigmoid(-1.0), _sigmoid(0.5)]
    p1 = [_sigmoid(-1.0), _sigmoid(1.5), _sigmoid(0.0)]
    dice0 = 1 - (2 * p0[0] + 1) / (sum(p0) + 1 + 1)
    dice1 = 1 - (2 * (p1[1] + p1[2]) + 1) / (sum(p1) + 2 + 1)
    dice = (dice0 + dice1) / 2

    got_focal = mask_all_loss(LOGITS, TARGET, focal_weight=1.0, dice_weight=0.0)
    got_dice = mask_all_loss(LOGITS, TARGET, focal_weight=0.0, dice_weight=1.0)
    got = mask_all_loss(LOGITS, TARGET, focal_weight=20.0, dice_weight=1.0)
    assert got_focal.item() == pytest.approx(focal, rel=1e-6)
    assert got_dice.item() == pytest.approx(dice, rel=1e-6)
    assert got.item() == pytest.approx(20 * focal + dice, rel=1e-6)
    # The defaults are the documented MaskFormer weights.
    assert mask_all_loss(LOGITS, TARGET).item() == pytest.approx(20 * focal + dice, rel=1e-6)


@pytest.mark.parametrize("loss_fn", [mask_loss, mask_all_loss, ce_loss])
def test_ignored_pixels_change_nothing(loss_fn) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6)
    target = torch.randint(0, 3, (2, 5, 6))
    target[0, :2] = 255
    target[1, :, 4:] = 255
    ignored = (target == 255).unsqueeze(1).expand_as(logits)
    changed = logits.clone()
    changed[ignored] = torch.randn(int(ignored.sum())) * 10
    assert torch.equal(loss_fn(logits, target), loss_fn(changed, target))

    leaf = logits.clone().requires_grad_()
    loss_fn(leaf, target).backward()
    assert leaf.grad[ignored].abs().max() == 0
    assert leaf.grad[~ignored].abs().max() > 0


@pytest.mark.parametrize("loss_fn", [mask_loss, mask_all_loss, ce_loss])
def test_all_ignored_gives_differentiable_zero(loss_fn) -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255)
    loss = loss_fn(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_dice_is_per_image_and_skips_fully_ignored_images() -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 6, 6)
    target = torch.randint(0, 4, (3, 6, 6))
    target[2] = 255
    dice = lambda lg, tg: mask_all_loss(lg, tg, focal_weight=0.0, dice_weight=1.0)  # noqa: E731
    per_image = [dice(logits[i : i + 1], target[i : i + 1]) for i in range(2)]
    assert dice(logits, target).item() == pytest.approx(sum(per_image).item() / 2, rel=1e-6)


def test_ce_matches_torch_cross_entropy() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 7, 3)
    target = torch.randint(0, 5, (2, 7, 3))
    target[:, 0] = 255
    assert torch.equal(ce_loss(logits, target), F.cross_entropy(logits, target, ignore_index=255))


def test_naive_align_is_sum_of_mse_and_does_not_train_the_target() -> None:
    x_a, x_b = torch.ones(1, 2, 2, 2, requires_grad=True), torch.zeros(1, 2, 2, 2, requires_grad=True)
    z = torch.full((1, 2, 2, 2), 3.0, requires_grad=True)
    loss = naive_align_loss([(x_a, z), (x_b, z)])
    assert loss.item() == pytest.approx((3 - 1) ** 2 + (3 - 0) ** 2)
    loss.backward()
    assert z.grad is None
    assert x_a.grad is not None and x_a.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["mask", "mask_all", "ce"])
@pytest.mark.parametrize(("weighting", "per_map"), [("total", 0.3 / 2), ("per_layer", 0.3)])
def test_total_is_main_plus_weighted_aux_and_align(kind: str, weighting: str, per_map: float) -> None:
    torch.manual_seed(3)
    target = torch.randint(0, 4, (2, 8, 8))
    output = VPNeXtOutput(
        logits=torch.randn(2, 4, 8, 8),
        aux_logits=[torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)],
        align_pairs=[(torch.randn(2, 6, 2, 2), torch.randn(2, 6, 2, 2))],
    )
    criterion = SegmentationLoss(loss=kind, aux_weight=0.3, aux_weighting=weighting, align_weight=2.0)
    terms = criterion(output, target)
    assert set(terms) == {"loss", "main", "aux_0", "aux_1", "align"}

    pixel = {"mask": mask_loss, "mask_all": mask_all_loss, "ce": ce_loss}[kind]
    assert torch.equal(terms["main"], pixel(output.logits, target))
    assert torch.equal(terms["aux_1"], pixel(output.aux_logits[1], target))
    assert torch.equal(terms["align"], naive_align_loss(output.align_pairs))
    expected = terms["main"] + per_map * (terms["aux_0"] + terms["aux_1"]) + 2.0 * terms["align"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_total_aux_weight_does_not_grow_with_the_number_of_layers() -> None:
    """Table I's 1-, 2- and 3-layer rows get the same total auxiliary weight with 'total'."""
    torch.manual_seed(4)
    target = torch.randint(0, 3, (1, 4, 4))
    aux = torch.randn(1, 3, 4, 4)
    main = torch.randn(1, 3, 4, 4)
    for weighting, grows in [("total", False), ("per_layer", True)]:
        criterion = SegmentationLoss(aux_weight=0.4, aux_weighting=weighting)
        totals = [
            (
                criterion(VPNeXtOutput(main, [aux] * n), target)["loss"] - criterion(main, target)["loss"]
            ).item()
            for n in (1, 2, 3)
        ]
        if grows:
            assert totals[2] == pytest.approx(3 * totals[0], rel=1e-6)
        else:
            assert totals == pytest.approx([totals[0]] * 3, rel=1e-6)


def test_bare_logits_give_only_main() -> None:
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    terms = SegmentationLoss()(logits, target)
    assert set(terms) == {"loss", "main"}
    assert torch.equal(terms["loss"], mask_loss(logits, target))


def test_mismatched_resolution_is_an_error() -> None:
    with pytest.raises(ValueError, match="label resolution"):
        mask_loss(torch.randn(1, 3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long))


def test_class_weight_weighs_ce_per_class_and_is_refused_by_mask_losses() -> None:
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 6, 5)
    target = torch.randint(0, 3, (2, 6, 5))
    target[0, 0] = 255
    weight = [0.5, 1.0, 4.0]
    criterion = SegmentationLoss(loss="ce", class_weight=weight)
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weight), ignore_index=255)
    assert torch.equal(criterion(logits, target)["main"], expected)
    # Weighted mean: per-pixel terms weighted by their class, divided by the summed weights.
    per_pixel = F.cross_entropy(logits, target, reduction="none", ignore_index=255)
    valid = target != 255
    w = torch.tensor(weight)[target.clamp(max=2)] * valid
    assert expected.item() == pytest.approx((per_pixel * w).sum().item() / w.sum().item(), rel=1e-6)
    assert not torch.equal(expected, ce_loss(logits, target))
    with pytest.raises(ValueError, match="3 values for 4 classes"):
        SegmentationLoss(loss="ce", class_weight=weight)(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="balances classes itself"):
        SegmentationLoss(loss="mask", class_weight=weight)
