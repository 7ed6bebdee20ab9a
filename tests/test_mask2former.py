"""The Mask2Former-style baseline (``head='mask2former'``): its pieces against independent references."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import TINY
from vpnext.losses import SegmentationLoss, SetCriterion, hungarian_match
from vpnext.losses.set_criterion import NO_OBJECT_WEIGHT, matching_cost, pairwise_mask_costs, semantic_targets
from vpnext.models import VPNeXt
from vpnext.models.mask2former import Mask2FormerHead, semantic_scores
from vpnext.models.outputs import SetPrediction
from vpnext.models.pixel_decoder import MSDeformAttn
from vpnext.models.presets import Mask2FormerWidths
from vpnext.ops.ms_deform_attn import ms_deform_attn

#: A small head: the published structure (6 + 9 layers, 3 levels, 4 points) at width 32.
SMALL = Mask2FormerWidths(dim=32, heads=4, encoder_ffn=64, decoder_ffn=64, queries=10)


def _bilinear_zero_padded(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Value of ``image`` (C, H, W) at normalised ``(x, y)``: pixel centres at (i + 0.5) / size,
    corners outside the image read zero."""
    _, height, width = image.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = int(torch.floor(torch.tensor(px))), int(torch.floor(torch.tensor(py)))
    out = torch.zeros(image.shape[0], dtype=image.dtype)
    for xi, yi in itertools.product((x0, x0 + 1), (y0, y0 + 1)):
        if 0 <= xi < width and 0 <= yi < height:
            out += (1 - abs(px - xi)) * (1 - abs(py - yi)) * image[:, yi, xi]
    return out


def test_ms_deform_attn_equals_a_naive_loop() -> None:
    torch.manual_seed(0)
    shapes = [(3, 5), (2, 2), (4, 1)]
    batch, heads, dim, queries, points = 2, 2, 3, 4, 2
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, dim, dtype=torch.float64)
    # Locations spill over the edges on purpose (zero padding is part of the definition).
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(shapes), points, dtype=torch.float64)
    out = ms_deform_attn(value, shapes, locations, weights)

    starts = [0, *itertools.accumulate(h * w for h, w in shapes)]
    expected = torch.zeros(batch, queries, heads, dim, dtype=torch.float64)
    for b, q, h in itertools.product(range(batch), range(queries), range(heads)):
        for level, (height, width) in enumerate(shapes):
            image = value[b, starts[level] : starts[level + 1], h].T.reshape(dim, height, width)
            for p in range(points):
                x, y = locations[b, q, h, level, p].tolist()
                expected[b, q, h] += weights[b, q, h, level, p] * _bilinear_zero_padded(image, x, y)
    torch.testing.assert_close(out, expected.flatten(2))


def test_deformable_attention_starts_on_rays_and_learns_its_offsets() -> None:
    torch.manual_seed(0)
    attn = MSDeformAttn(dim=8, heads=4, levels=2, points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # Point p of every head lies p + 1 steps out along the head's direction, the same on each level.
    torch.testing.assert_close(bias[:, :, 2], 3 * bias[:, :, 0])
    torch.testing.assert_close(bias[:, 0], bias[:, 1])
    assert bias[:, 0, 0].abs().amax(-1).eq(1).all()
    query, value = torch.randn(1, 6, 8), torch.randn(1, 4 * 4 + 2 * 2, 8)
    reference = torch.rand(6, 2)
    attn(query, reference, value, [(4, 4), (2, 2)]).square().sum().backward()
    assert attn.sampling_offsets.weight.grad.abs().sum() > 0
    assert attn.attention_weights.weight.grad.abs().sum() > 0


def test_matching_cost_is_mask2formers_weighted_sum() -> None:
    # Constant masks: every point sees the same value, so the costs are known in closed form,
    # whatever points are drawn.
    torch.manual_seed(0)
    queries, num_classes, size = 5, 4, (6, 7)
    class_logits = torch.randn(queries, num_classes + 1)
    mask_values = torch.randn(queries) * 2
    classes = torch.tensor([0, 2, 3])
    target_on = torch.tensor([1.0, 0.0, 1.0])  # all-one, all-zero, all-one masks
    cost = matching_cost(
        class_logits,
        mask_values[:, None, None].expand(-1, *size),
        classes,
        target_on[:, None, None].expand(-1, *size),
        num_points=100,
    )
    probs = class_logits.softmax(-1)
    for q, t in itertools.product(range(queries), range(len(classes))):
        x, on = mask_values[q], target_on[t]
        bce = -(on * F.logsigmoid(x) + (1 - on) * F.logsigmoid(-x))
        p = torch.sigmoid(x)
        dice = 1 - (2 * p * on * 100 + 1) / (p * 100 + on * 100 + 1)
        torch.testing.assert_close(cost[q, t], 5 * bce + 2 * -probs[q, classes[t]] + 5 * dice)


@pytest.mark.parametrize("seed", range(4))
def test_hungarian_match_is_the_cheapest_assignment(seed: int) -> None:
    torch.manual_seed(seed)
    class_logits, mask_logits = torch.randn(5, 4), torch.randn(5, 6, 7) * 3
    classes, masks = semantic_targets(torch.randint(0, 3, (1, 12, 14)))[0]
    torch.manual_seed(100)
    rows, cols = hungarian_match(class_logits, mask_logits, classes, masks, num_points=64)
    torch.manual_seed(100)  # the same points
    cost = matching_cost(class_logits, mask_logits, classes, masks, num_points=64)
    assert sorted(cols.tolist()) == list(range(len(classes)))
    best = min(
        sum(float(cost[q, t]) for t, q in enumerate(chosen))
        for chosen in itertools.permutations(range(5), len(classes))
    )
    assert float(cost[rows, cols].sum()) == pytest.approx(best, rel=1e-6)


def test_hungarian_match_recovers_a_permutation_of_the_targets() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (24, 24))
    classes, masks = semantic_targets(labels[None])[0]
    permutation = torch.tensor([2, 0, 3, 1])
    # Query q predicts target permutation[q] sharply, plus one query that predicts nothing.
    mask_logits = torch.cat([(masks[permutation] * 2 - 1) * 8, torch.full((1, 24, 24), -8.0)])
    class_logits = torch.zeros(5, 5)
    rows, cols = hungarian_match(class_logits, mask_logits, classes, masks)
    assert rows.tolist() == [0, 1, 2, 3] and cols.tolist() == permutation.tolist()


def test_pairwise_mask_costs_equal_per_pair_losses() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 50), (torch.rand(2, 50) > 0.5).float()
    bce, dice = pairwise_mask_costs(logits, targets)
    for q, t in itertools.product(range(3), range(2)):
        torch.testing.assert_close(bce[q, t], F.binary_cross_entropy_with_logits(logits[q], targets[t]))
        p = logits[q].sigmoid()
        torch.testing.assert_close(
            dice[q, t], 1 - (2 * (p * targets[t]).sum() + 1) / (p.sum() + targets[t].sum() + 1)
        )


def test_semantic_scores_combine_class_and_mask_probabilities() -> None:
    torch.manual_seed(0)
    prediction = SetPrediction(torch.randn(2, 4, 3 + 1), torch.randn(2, 4, 5, 6))
    scores = semantic_scores(prediction, (5, 6))
    b, k, y, x = 1, 2, 3, 4
    expected = sum(
        prediction.class_logits[b, q].softmax(-1)[k] * prediction.mask_logits[b, q, y, x].sigmoid()
        for q in range(4)
    )
    torch.testing.assert_close(scores[b, k, y, x], expected)
    # The resize happens on the mask logits, before the sigmoid (Mask2Former's order).
    larger = semantic_scores(prediction, (10, 12))
    masks = F.interpolate(prediction.mask_logits, size=(10, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        larger[0, 0], (prediction.class_logits[0].softmax(-1)[:, 0, None, None] * masks[0].sigmoid()).sum(0)
    )


def test_semantic_targets_leave_ignored_pixels_out_of_every_mask() -> None:
    labels = torch.tensor([[[0, 2, 255], [2, 2, 255]]])
    classes, masks = semantic_targets(labels)[0]
    assert classes.tolist() == [0, 2]
    assert masks[:, :, 2].sum() == 0 and masks.sum() == 4


def test_class_loss_sends_unmatched_queries_to_no_object_at_its_weight() -> None:
    # One target, three queries with constant masks: query 1 is the only plausible match.
    class_logits = torch.randn(1, 3, 3)
    mask_logits = torch.tensor([-9.0, 9.0, -9.0])[None, :, None, None].expand(1, 3, 4, 4).clone()
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    criterion = SetCriterion(num_classes=2, num_points=64)
    terms = criterion.layer_terms(SetPrediction(class_logits, mask_logits), semantic_targets(labels), 1.0)
    log_p = class_logits[0].log_softmax(-1)
    weights = torch.tensor([NO_OBJECT_WEIGHT, 1.0, NO_OBJECT_WEIGHT])
    nll = -torch.stack([log_p[0, 2], log_p[1, 0], log_p[2, 2]])
    torch.testing.assert_close(terms["class"], (weights * nll).sum() / weights.sum())
    assert float(terms["mask"]) < 1e-3 and float(terms["dice"]) < 1e-3


def test_set_criterion_sums_every_decoder_layer_with_mask2formers_weights() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[1, :4] = 255
    layers = [SetPrediction(torch.randn(2, 6, 4), torch.randn(2, 6, 8, 8)) for _ in range(3)]
    criterion = SetCriterion(num_classes=3, num_points=32)
    torch.manual_seed(1)
    total = criterion(layers, labels)
    torch.manual_seed(1)  # the same points for matching and sampling
    targets = semantic_targets(labels)
    num_masks = float(sum(len(c) for c, _ in targets))
    expected = 0.0
    for layer in layers:
        terms = criterion.layer_terms(layer, targets, num_masks)
        expected = expected + 2 * terms["class"] + 5 * terms["mask"] + 5 * terms["dice"]
    torch.testing.assert_close(total["total"], expected)


def test_mask2former_model_trains_end_to_end_and_predicts_mask2formers_argmax() -> None:
    torch.manual_seed(0)
    model = VPNeXt(
        4,
        **{**TINY, "backbone": "test_vit"},
        head="mask2former",
        upsampler="bilinear",
        aux="deep_supervision",
    )
    model.head = Mask2FormerHead(model.backbone.embed_dim, 4, SMALL)
    # As after a first step: the zero-initialised offset and weight projections of the deformable
    # attention pass no gradient to their input (the position embedding) until they move.
    for name, param in model.head.named_parameters():
        if "sampling_offsets.weight" in name or "attention_weights.weight" in name:
            torch.nn.init.normal_(param, std=0.01)
    # 60x76 pads to 64x80: a 4x5 token grid, so the 1/32 level (2x2) is more than one pixel (a 1x1 map
    # is constant after the GroupNorm of its projection and passes no gradient back).
    images, labels = torch.randn(2, 3, 60, 76), torch.randint(0, 4, (2, 60, 76))
    output = model.forward_train(images)
    assert len(output.set_predictions) == SMALL.decoder_layers + 1
    assert output.padded_size == (64, 80)
    assert output.set_predictions[-1].mask_logits.shape == (2, SMALL.queries, 16, 20)
    terms = SegmentationLoss(loss="ce")(output, labels)
    assert {"set_class", "set_mask", "set_dice", "aux_0"} <= terms.keys()
    terms["loss"].backward()
    silent = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not silent

    model.eval()
    with torch.no_grad():
        logits = model(images)
        x_z = model.backbone(model.backbone.patch_proj(F.pad(images, (0, 4, 0, 4))), ())[1]
        scores = semantic_scores(model.head(x_z)[-1], (64, 80))
    assert logits.shape == (2, 4, 60, 76)
    assert torch.equal(logits.argmax(1), scores[..., :60, :76].argmax(1))


@pytest.mark.parametrize(
    ("aux", "upsampler"), [("vcr", "bilinear"), ("none", "hiclr"), ("none", "mock_pyramid")]
)
def test_mask2former_refuses_what_it_cannot_combine_with(aux: str, upsampler: str) -> None:
    with pytest.raises(ValueError, match="head="):
        VPNeXt(4, **TINY, head="mask2former", aux=aux, upsampler=upsampler)


def test_deformable_attention_macs_count_the_bilinear_samples_and_the_weighted_sum() -> None:
    from vpnext.models.macs import count_macs

    shapes, batch, heads, dim, queries, levels, points = [(4, 4), (2, 2)], 2, 3, 5, 7, 2, 4
    value = torch.randn(batch, 20, heads, dim)
    locations, weights = (
        torch.rand(batch, queries, heads, levels, points, 2),
        torch.rand(batch, queries, heads, levels, points),
    )

    class Op(torch.nn.Module):
        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return ms_deform_attn(v, shapes, locations, weights)

    samples = batch * heads * dim * queries * levels * points
    assert count_macs(Op(), value).macs == 4 * samples + samples  # 4 per bilinear sample, 1 per weight


def test_points_per_mask_follow_mask2formers_fraction_below_its_mask_size() -> None:
    criterion = SetCriterion(num_classes=3)
    assert criterion.points_for(torch.zeros(1, 1, 128, 128)) == 112 * 112  # Mask2Former's 512 crops
    assert criterion.points_for(torch.zeros(1, 1, 200, 200)) == 112 * 112
    assert criterion.points_for(torch.zeros(1, 1, 44, 60)) == round(44 * 60 * 112**2 / 128**2)  # CamVid crops
    assert SetCriterion(num_classes=3, num_points=50).points_for(torch.zeros(1, 1, 128, 128)) == 50


def test_mask2former_width_scales_heads_and_ffns() -> None:
    from vpnext.models.presets import mask2former_widths

    assert mask2former_widths("efficient", 192) == Mask2FormerWidths(256, 8, 1024, 2048)  # as published
    assert mask2former_widths("efficient", 192, dim=128) == Mask2FormerWidths(128, 4, 512, 1024)
    assert mask2former_widths("paper", 1024) == Mask2FormerWidths(1024, 32, 4096, 4096)  # ViT-Adapter-L's
    model = VPNeXt(4, **TINY, head="mask2former", upsampler="bilinear", aux="none", mask2former_dim=64)
    assert model.head.decoder.query_feat.shape == (100, 64) and model.head.decoder.heads == 2
