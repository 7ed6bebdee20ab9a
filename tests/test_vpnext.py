"""VPNeXt: every ablation combination, eval/train contracts, HiCLR depth, VCR gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import TINY
from vpnext.models import VPNeXt, VPNeXtOutput, resolve_aux_layers
from vpnext.models.vitup import HiCLRStep

AUX = ["none", "deep_supervision", "naive_align", "vcr"]
HEADS = ["context", "mask_transformer"]
UPSAMPLERS = [("bilinear", 0), ("mock_pyramid", 0), ("mock_hiclr", 2)] + [("hiclr", d) for d in range(6)]
K = 5


def build(**overrides) -> VPNeXt:
    return VPNeXt(K, **{**TINY, **overrides})


@pytest.mark.parametrize(
    ("aux", "head", "upsampler"),
    [
        (a, h, u)
        for a, h, u in itertools.product(AUX, HEADS, UPSAMPLERS)
        if not (a == "vcr" and h == "mask_transformer")
    ]
    + [(a, "mask2former", ("bilinear", 0)) for a in AUX if a != "vcr"],
)
def test_every_meaningful_combination_runs(aux: str, head: str, upsampler: tuple[str, int]) -> None:
    # timm's 6-block, 64-wide test ViT: the 63 combinations in a few seconds instead of ViT-Tiny's 12.
    model = build(
        backbone="test_vit",
        aux=aux,
        head=head,
        upsampler=upsampler[0],
        hiclr_depth=upsampler[1],
        aux_layers=2,
    )
    images = torch.randn(2, 3, 50, 70)
    model.eval()
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (2, K, 50, 70)
    assert torch.isfinite(logits).all()

    model.train()
    assert model(images).shape == (2, K, 50, 70)  # model(x) is predict() in either mode
    out = model.forward_train(images)
    assert isinstance(out, VPNeXtOutput)
    assert out.logits.shape == (2, K, 50, 70)
    if aux in ("deep_supervision", "vcr"):
        assert [a.shape for a in out.aux_logits] == [(2, K, 50, 70)] * 2
    else:
        assert out.aux_logits == []
    if aux == "naive_align":
        assert len(out.align_pairs) == 2
        for x_i, target in out.align_pairs:
            assert x_i.shape == target.shape == (2, 64, 4, 5)
            assert x_i.requires_grad and not target.requires_grad
    else:
        assert out.align_pairs == []
    assert len(out.set_predictions) == (10 if head == "mask2former" else 0)  # Mask2Former's 9 layers + 1


@pytest.mark.parametrize("upsampler", ["bilinear", "mock_pyramid", "mock_hiclr", "hiclr"])
def test_vcr_with_mask_transformer_is_refused(upsampler: str) -> None:
    with pytest.raises(ValueError, match="VCR replays the context head"):
        build(aux="vcr", head="mask_transformer", upsampler=upsampler)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aux": "bogus"}, "aux='bogus'"),
        ({"upsampler": "hiclr", "hiclr_depth": 6}, "hiclr_depth=6"),
        ({"aux_layers": 0}, "aux_layers=0"),
        ({"aux_layers": [3, 11]}, "aux_layers"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(**kwargs)


def test_aux_layers_resolution() -> None:
    assert resolve_aux_layers(2, 12) == [4, 8]
    assert resolve_aux_layers(1, 12) == [6]
    assert resolve_aux_layers(3, 36) == [9, 18, 27]
    # 24 blocks (ViT-L): SETR's deep-supervised blocks, always including Fig. 4's 15th layer.
    assert resolve_aux_layers(1, 24) == [14]
    assert resolve_aux_layers(2, 24) == [9, 14]
    assert resolve_aux_layers(3, 24) == [9, 14, 19]
    assert resolve_aux_layers(4, 24) == [4, 9, 14, 19]
    assert resolve_aux_layers([9, 2], 12) == [2, 9]
    # Every count the range admits keeps the last block (x_z itself) out; one more would not.
    for depth in (3, 6, 12, 24):
        for count in range(1, depth - 1):
            indices = resolve_aux_layers(count, depth)
            assert len(set(indices)) == count and max(indices) < depth - 1, (depth, count)
        with pytest.raises(ValueError, match=f"between 1 and {depth - 2}"):
            resolve_aux_layers(depth - 1, depth)


@pytest.mark.parametrize("aux", ["deep_supervision", "naive_align", "vcr"])
def test_eval_never_runs_aux_and_matches_aux_none(aux: str) -> None:
    reference = build(aux="none").eval()
    model = build(aux=aux).eval()
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("aux.") for k in missing)
    calls = []
    for module in model.aux.modules():
        module.register_forward_hook(lambda *_: calls.append(1))
    images = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(model(images), reference(images))
    assert calls == []
    model.train()
    model.predict(images)
    assert calls == []  # predict() never runs them, whatever the mode
    model.forward_train(images)
    assert calls, "the hook must fire in forward_train, else the checks above prove nothing"


@pytest.mark.parametrize("depth", range(1, 6))
def test_hiclr_runs_exactly_depth_iterations(depth: int) -> None:
    model = build(upsampler="hiclr", hiclr_depth=depth, aux="none").eval()
    calls = []
    for module in model.modules():
        if isinstance(module, HiCLRStep):
            module.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 48))
    assert len(calls) == depth


def test_hiclr_depth_zero_classifies_at_one_sixteenth_and_upsamples_the_logits() -> None:
    """Depth 0 is the bilinear row: classifier on ``y_z`` at 1/16, logits resized x16 — computed here
    step by step from the parts, not by comparing two models built by the same code."""
    model = build(upsampler="hiclr", hiclr_depth=0, aux="none").eval()
    assert model.pyramid_embed is None
    images = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        _, x_z = model.backbone(model.backbone.patch_proj(images))
        y_z, _ = model.head(x_z)
        reference = F.interpolate(model.head.classifier(y_z), (48, 64), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(images), reference, atol=0, rtol=0)
        assert y_z.shape[-2:] == (3, 4)
    one = build(upsampler="hiclr", hiclr_depth=1, aux="none").eval()
    one.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(one(images), reference, atol=1e-4)  # depth 1 really is another path


@pytest.mark.parametrize("decoder", ["efficient", "paper"])
@pytest.mark.parametrize("upsampler", UPSAMPLERS)
def test_classifier_reads_the_decoder_width_in_every_table2_row(
    decoder: str, upsampler: tuple[str, int]
) -> None:
    """Table II rows differ only in the upsampler: the classifier always reads D channels, even
    when the pyramid is narrower than the class count."""
    classes = 40  # more classes than pyramid channels
    model = VPNeXt(
        classes,
        backbone="vit_tiny_patch16_224",
        img_size=64,
        decoder=decoder,
        pyramid_dim=16,
        upsampler=upsampler[0],
        hiclr_depth=upsampler[1],
        aux="vcr",
    )
    width = model.widths.decoder_dim
    assert width == (256 if decoder == "efficient" else 192)
    classifier = model.head.classifier[-1]
    assert classifier.in_channels == width >= classes
    assert [c[-1].in_channels for c in model.aux.classifiers] == [width, width]
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, classes, 32, 32)


@pytest.mark.parametrize(
    ("backbone", "width", "heads"), [("vit_tiny_patch16_224", 192, 3), ("vit_small_patch16_224", 384, 6)]
)
def test_mask_transformer_defaults_to_segmenters_published_width(
    backbone: str, width: int, heads: int
) -> None:
    """Segmenter's mask transformer runs at the ViT's width with width/64 heads, whatever the
    context-head width (``decoder_dim``) is; explicit values override."""
    model = VPNeXt(K, backbone=backbone, img_size=32, head="mask_transformer", aux="none", decoder_dim=32)
    assert model.head.proj_in.out_features == width
    assert model.head.blocks[0].attn.num_heads == heads
    custom = VPNeXt(K, backbone=backbone, img_size=32, head="mask_transformer", aux="none", segmenter_dim=128)
    assert custom.head.proj_in.out_features == 128 and custom.head.blocks[0].attn.num_heads == 2


def _perturbed(model: VPNeXt, images: torch.Tensor):
    """Backbone features, x_z and the head's context of a train-mode forward, with the offsets off zero."""
    with torch.no_grad():
        model.head.offset_conv.weight.normal_(std=0.05)
        model.head.offset_conv.bias.normal_(std=0.5)
        features, x_z = model.backbone(model.backbone.patch_proj(images), model.aux_layers)
        _, context = model.head(x_z)
    return features, x_z, context


def _replace(context, **changes):
    return type(context)(**{**vars(context), **changes})


def test_vcr_aux_logits_follow_the_replayed_offsets_and_affinity() -> None:
    """Eqs. (2)-(3): change only sigma_z, or only Lambda_z's query or key, and the auxiliary logits
    change; the same context gives the same logits."""
    model = build(aux="vcr", aux_layers=[3, 7]).eval()
    images = torch.randn(2, 3, 48, 64)
    features, x_z, context = _perturbed(model, images)
    size = (48, 64)

    def aux_logits(ctx):
        with torch.no_grad():
            logits, _ = model.aux(features, x_z, ctx, size)
        return torch.stack(logits)

    base = aux_logits(context)
    assert torch.equal(base, aux_logits(_replace(context)))
    changed = {
        "offsets": context.offsets + 0.7 * torch.randn_like(context.offsets),
        "query": context.query + torch.randn_like(context.query),
        "key": context.key + torch.randn_like(context.key),
    }
    for name, value in changed.items():
        assert not torch.allclose(aux_logits(_replace(context, **{name: value})), base, atol=1e-5), name


def test_deep_supervision_aux_logits_do_not_depend_on_the_head() -> None:
    """Deep supervision computes its own context per layer: the main head's offsets, affinity and
    weights change nothing. VCR, with the same change to the head, does change."""
    images = torch.randn(2, 3, 48, 64)
    for aux, depends in [("deep_supervision", False), ("vcr", True)]:
        model = build(aux=aux, aux_layers=[3, 7]).eval()
        features, x_z, context = _perturbed(model, images)
        with torch.no_grad():
            before = torch.stack(model.aux(features, x_z, context, (48, 64))[0])
            for p in model.head.parameters():
                p.add_(0.5 * torch.randn_like(p))
            _, new_context = model.head(x_z)
            after = torch.stack(model.aux(features, x_z, new_context, (48, 64))[0])
        assert torch.equal(before, after) is not depends, aux


def _aux_gradients(replay_stop_grad: bool) -> dict[str, torch.Tensor | None]:
    model = build(aux="vcr", aux_layers=[3, 7], replay_stop_grad=replay_stop_grad).train()
    with torch.no_grad():  # move off the zero init so offsets actually depend on the features
        model.head.offset_conv.weight.normal_(std=0.05)
    out = model.forward_train(torch.randn(2, 3, 48, 48))
    sum(a.square().mean() for a in out.aux_logits).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def _nonzero(grad: torch.Tensor | None) -> bool:
    return grad is not None and grad.abs().sum().item() > 0


def test_vcr_aux_loss_reaches_backbone_blocks_and_aux_branches() -> None:
    grads = _aux_gradients(replay_stop_grad=True)
    for block in (0, 3, 7):
        assert _nonzero(grads[f"backbone.vit.blocks.{block}.mlp.fc1.weight"]), block
    assert not _nonzero(grads["backbone.vit.blocks.8.mlp.fc1.weight"])  # after the last aux layer
    for branch in (0, 1):
        assert _nonzero(grads[f"aux.branches.{branch}.deform.weight"])
        assert _nonzero(grads[f"aux.branches.{branch}.value.weight"])
        assert _nonzero(grads[f"aux.classifiers.{branch}.1.weight"])


@pytest.mark.parametrize("replay_stop_grad", [True, False])
def test_replay_stop_grad_switch(replay_stop_grad: bool) -> None:
    grads = _aux_gradients(replay_stop_grad)
    replayed = ["head.offset_conv.weight", "head.query_key.weight"]
    for name in replayed:
        assert _nonzero(grads[name]) is (not replay_stop_grad), name


def test_mock_hiclr_is_the_real_row_with_a_mock_quarter_feature() -> None:
    """Table II's mock row differs from "Our real pyramid, 2" only in where the 1/4 feature comes from."""
    real = build(upsampler="hiclr", hiclr_depth=2, aux="none").eval()
    mock = build(upsampler="mock_hiclr", hiclr_depth=2, aux="none").eval()
    assert mock.pyramid_embed is None and real.pyramid_embed is not None

    def shapes(model: VPNeXt, source: str) -> dict[str, torch.Size]:
        state = model.state_dict().items()
        return {
            k.replace("upsampler.hiclr.", "upsampler."): v.shape for k, v in state if not k.startswith(source)
        }

    assert shapes(mock, "upsampler.mock.") == shapes(real, "pyramid_embed.")

    # With the real row's weights, the mock row is HiCLR refining the mock feature of the 1/16 map.
    weights = {k.replace("upsampler.", "upsampler.hiclr.", 1): v for k, v in real.state_dict().items()}
    missing, _ = mock.load_state_dict(weights, strict=False)
    assert missing and all(k.startswith("upsampler.mock.") for k in missing)
    y = torch.randn(2, mock.widths.decoder_dim, 4, 5)
    quarter = mock.upsampler.mock(y)
    assert quarter.shape == (2, mock.widths.pyramid_dim, 16, 20)
    with torch.no_grad():
        torch.testing.assert_close(mock.upsampler(y), real.upsampler(y, quarter), atol=0, rtol=0)
        assert mock.predict(torch.randn(1, 3, 64, 80)).shape == (1, K, 64, 80)


@pytest.mark.parametrize("depth", [0, 6])
def test_mock_hiclr_needs_one_to_five_iterations(depth: int) -> None:
    with pytest.raises(ValueError, match="mock_hiclr"):
        build(upsampler="mock_hiclr", hiclr_depth=depth)
