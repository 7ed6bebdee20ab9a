"""``torch.compile``: the whole model is one graph (no graph break) and computes what eager does."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from tests.helpers import TINY
from vpnext.models import VPNeXt
from vpnext.models.mask2former import Mask2FormerHead
from vpnext.models.presets import Mask2FormerWidths

SHALLOW_MASK2FORMER = Mask2FormerWidths(
    dim=32, heads=4, encoder_ffn=64, decoder_ffn=64, queries=8, encoder_layers=1, decoder_layers=3
)
#: Every decoder part with a deformable conv: the context head, VCR's replay and HiCLR.
DEFORMABLE = dict(backbone="test_vit", aux="vcr", upsampler="hiclr", hiclr_depth=2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [DEFORMABLE, dict(backbone="test_vit", aux="deep_supervision", head="mask2former", upsampler="bilinear")],
    ids=["vpnext", "mask2former"],
)
def test_model_compiles_without_a_graph_break(overrides: dict) -> None:
    model = VPNeXt(5, **{**TINY, **overrides})
    if overrides.get("head") == "mask2former":  # every kind of layer once or twice: a short trace
        model.head = Mask2FormerHead(model.backbone.embed_dim, 5, SHALLOW_MASK2FORMER)
    images = torch.randn(2, 3, 64, 64)
    # Mask2Former's forward_train runs everything its predict does (dynamo takes ~10 s a trace of it).
    for fn in (
        (model.forward_train,)
        if overrides.get("head") == "mask2former"
        else (model.forward_train, model.predict)
    ):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(fn)(images)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1


@pytest.mark.slow
def test_compiled_training_step_equals_eager() -> None:
    torch.manual_seed(0)
    model = VPNeXt(5, **{**TINY, **DEFORMABLE})
    images = torch.randn(2, 3, 64, 64)

    def loss_and_grads(forward) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(1)  # test_vit has dropout
        out = forward(images)
        loss = out.logits.square().mean() + sum(a.square().mean() for a in out.aux_logits)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    torch._dynamo.reset()
    eager_loss, eager_grads = loss_and_grads(model.forward_train)
    compiled_loss, compiled_grads = loss_and_grads(
        torch.compile(model.forward_train, backend="aot_eager", fullgraph=True)
    )
    torch.testing.assert_close(compiled_loss, eager_loss)
    assert len(compiled_grads) == len(eager_grads)
    for compiled, eager in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_training_module_runs_the_compiled_model_when_asked() -> None:
    from vpnext.training import SegmentationModule

    module = SegmentationModule(num_classes=5, compile="aot_eager", **{**TINY, **DEFORMABLE}).eval()
    plain = SegmentationModule(num_classes=5, **{**TINY, **DEFORMABLE})
    assert plain.model_fn("predict") is plain.model
    predict = module.model_fn("predict")
    assert predict is module.model_fn("predict") and predict is not module.model
    torch._dynamo.reset()
    images = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(module(images), module.model.predict(images))
