"""MAC counts against hand counts, including the ops FlopCounterMode alone counts as zero."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from vpnext.models.macs import MacReport, count_macs
from vpnext.ops import DeformConv3x3, deform_conv_macs


class _Call(nn.Module):
    """Wraps a function of the inputs so that count_macs can run it."""

    def __init__(self, fn: object) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Tensor) -> Tensor:
        return self.fn(*args)


def test_linear_and_conv() -> None:
    assert count_macs(nn.Linear(10, 7), torch.randn(4, 10)).macs == 4 * 10 * 7
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # (15, 17) -> (8, 9)
    report = count_macs(conv, torch.randn(2, 3, 15, 17))
    assert report.macs == 2 * 8 * 9 * 8 * 3 * 9
    assert report.params == 8 * 3 * 9 + 8


def test_fused_attention_on_cpu() -> None:
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 8)
    attention = _Call(F.scaled_dot_product_attention)
    with FlopCounterMode(display=False) as plain:
        attention(q, k, v)
    # The fused CPU kernel runs and torch alone counts it as 0 (DESIGN.md 4); if torch ever
    # counts it, this test says so and our formula can go.
    assert plain.get_total_flops() == 0
    assert count_macs(attention, q, k, v).macs == 2 * 3 * 10 * 12 * 8 * 2  # Q K^T and attention . V


@pytest.mark.parametrize("impl", ["embedding_bag", "grid_sample", "torchvision"])
def test_deformable_conv_counts_conv_plus_sampling(impl: str) -> None:
    layer = DeformConv3x3(6, 5, impl=impl)
    x, offset = torch.randn(2, 6, 7, 11), torch.randn(2, 18, 7, 11)
    positions = 2 * 7 * 11
    expected = positions * 5 * 6 * 9 + positions * 9 * 6 * 4  # plain 3x3 conv + 4 MACs per sample
    assert deform_conv_macs(6, (5, 6, 3, 3), (2, 5, 7, 11)) == expected
    assert count_macs(layer, x, offset).macs == expected


def test_torchvision_deform_conv_general_shape() -> None:
    # Stride 2, groups 2: the formula follows the output size and the grouped weight.
    weight = torch.randn(4, 3, 3, 3)
    x, offset = torch.randn(1, 6, 9, 9), torch.randn(1, 18, 5, 5)
    report = count_macs(
        _Call(lambda x, o: torchvision.ops.deform_conv2d(x, o, weight, stride=2, padding=1)), x, offset
    )
    assert report.macs == 25 * 4 * 3 * 9 + 25 * 9 * 6 * 4


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 4)
        self.shared = nn.Linear(16, 3)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        f = self.backbone(x)
        gram = f @ f.T  # runs in the root module: "other"
        return self.head(f).sum() + self._head_extra(f) + gram.sum() * self.scale

    def _head_extra(self, f: Tensor) -> Tensor:
        return self.shared(f).sum()


def test_groups_follow_the_innermost_named_module() -> None:
    net, x = _Net(), torch.randn(5, 8)
    report = count_macs(net, x, groups={"backbone": "backbone", "second": "backbone.2", "head": "head"})
    assert report.by_group == {
        "backbone": 5 * 8 * 16,
        "second": 5 * 16 * 16,
        "head": 5 * 16 * 4,
        "other": 5 * 16 * 3 + 5 * 5 * 16,
    }
    assert report.macs == sum(report.by_group.values())
    assert report.params_by_group == {
        "backbone": 8 * 16 + 16,
        "second": 16 * 16 + 16,
        "head": 16 * 4 + 4,
        "other": 16 * 3 + 3 + 1,
    }
    assert report.params == sum(report.params_by_group.values())


def test_module_without_group_inherits_its_callers() -> None:
    class Caller(nn.Module):
        def __init__(self, helper: nn.Module) -> None:
            super().__init__()
            self.helper = [helper]  # not a child: named elsewhere in the model

        def forward(self, x: Tensor) -> Tensor:
            return self.helper[0](x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.helper = nn.Linear(4, 4)
            self.head = Caller(self.helper)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(x) + self.helper(x)

    report = count_macs(Net(), torch.randn(2, 4), groups={"head": "head"})
    assert report.by_group == {"head": 2 * 16, "other": 2 * 16}


def test_counting_keeps_mode_and_disables_grad() -> None:
    seen = []

    class Probe(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            seen.append((self.training, torch.is_grad_enabled()))
            return super().forward(x)

    probe = Probe(3, 2).train()
    report = count_macs(probe, torch.randn(2, 3))
    assert seen == [(True, False)] and probe.training
    assert report.by_group == {"other": 2 * 3 * 2}
    with pytest.raises(ValueError, match="reserved"):
        count_macs(probe, torch.randn(2, 3), groups={"other": ""})


def test_to_dict() -> None:
    report = MacReport(
        macs=3_000_000_000,
        params=2_500_000,
        by_group={"head": 3_000_000_000, "other": 0},
        params_by_group={"head": 2_000_000, "other": 500_000},
    )
    summary = report.to_dict()
    assert summary["gmacs"] == 3.0 and summary["params_m"] == 2.5
    assert summary["groups"]["head"]["gmacs"] == 3.0 and summary["groups"]["other"]["params_m"] == 0.5


def test_vit_tiny_matches_hand_formula() -> None:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    report = count_macs(model, torch.randn(1, 3, 224, 224), groups={"blocks": "blocks"})
    tokens, width, depth = 14 * 14 + 1, 192, 12  # N includes the cls token
    patch_embed = 14 * 14 * (3 * 16 * 16) * width
    block = 3 * tokens * width**2 + 2 * tokens**2 * width + tokens * width**2 + 8 * tokens * width**2
    head = width * 1000
    hand = patch_embed + depth * block + head
    assert abs(report.macs - hand) <= 0.01 * hand
    assert abs(report.by_group["blocks"] - depth * block) <= 0.01 * depth * block
