"""VPNeXt: every ablation combination, eval/train contracts, HiCLR depth, VCR gradients."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.conftest import TINY
from vpnext.models import VPNeXt, VPNeXtOutput, resolve_aux_layers
from vpnext.models.vitup import HiCLRStep

AUX = ["none", "deep_supervision", "naive_align", "vcr"]
HEADS = ["context", "mask_transformer"]
UPSAMPLERS = [("bilinear", 0), ("mock_pyramid", 0)] + [("hiclr", d) for d in range(6)]
K = 5


def build(**overrides) -> VPNeXt:
    return VPNeXt(K, **{**TINY, **overrides})


@pytest.mark.parametrize(
    ("aux", "head", "upsampler"),
    [
        (a, h, u)
        for a, h, u in itertools.product(AUX, HEADS, UPSAMPLERS)
        if not (a == "vcr" and h == "mask_transformer")
    ],
)
def test_every_meaningful_combination_runs(aux: str, head: str, upsampler: tuple[str, int]) -> None:
    model = build(aux=aux, head=head, upsampler=upsampler[0], hiclr_depth=upsampler[1], aux_layers=2)
    images = torch.randn(2, 3, 50, 70)
    model.eval()
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (2, K, 50, 70)
    assert torch.isfinite(logits).all()

    model.train()
    out = model(images)
    assert isinstance(out, VPNeXtOutput)
    assert out.logits.shape == (2, K, 50, 70)
    if aux in ("deep_supervision", "vcr"):
        assert [a.shape for a in out.aux_logits] == [(2, K, 50, 70)] * 2
    else:
        assert out.aux_logits == []
    if aux == "naive_align":
        assert len(out.align_pairs) == 2
        for x_i, target in out.align_pairs:
            assert x_i.shape == target.shape == (2, 192, 4, 5)
            assert x_i.requires_grad and not target.requires_grad
    else:
        assert out.align_pairs == []


@pytest.mark.parametrize("upsampler", ["bilinear", "mock_pyramid", "hiclr"])
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
    assert resolve_aux_layers(2, 24) == [8, 16]
    assert resolve_aux_layers(1, 12) == [6]
    assert resolve_aux_layers(3, 24) == [6, 12, 18]
    assert resolve_aux_layers([9, 2], 12) == [2, 9]


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
    model(images)
    assert calls, "the hook must fire in train mode, else the eval check proves nothing"


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


def test_hiclr_depth_zero_is_the_bilinear_path() -> None:
    torch.manual_seed(1)
    zero = build(upsampler="hiclr", hiclr_depth=0).eval()
    torch.manual_seed(1)
    bilinear = build(upsampler="bilinear").eval()
    assert zero.state_dict().keys() == bilinear.state_dict().keys()
    bilinear.load_state_dict(zero.state_dict())
    images = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(zero(images), bilinear(images))


def _aux_gradients(replay_stop_grad: bool) -> dict[str, torch.Tensor | None]:
    model = build(aux="vcr", aux_layers=[3, 7], replay_stop_grad=replay_stop_grad).train()
    with torch.no_grad():  # move off the zero init so offsets actually depend on the features
        model.head.offset_conv.weight.normal_(std=0.05)
    out = model(torch.randn(2, 3, 48, 48))
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
