"""The deformable 3x3 conv matches torchvision in values and gradients, and its switches work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from vpnext.ops import DeformConv3x3, deform_conv3x3
from vpnext.ops.deform_conv import resolve_impl

FAST_IMPLS = ["embedding_bag", "grid_sample"]


def _inputs(
    dtype: torch.dtype = torch.float64, batch: int = 2, size: tuple[int, int] = (7, 11)
) -> list[Tensor]:
    """x, offset, weight, bias with offsets of a few pixels: many samples partly or fully outside."""
    gen = torch.Generator().manual_seed(0)
    height, width = size
    x = torch.randn(batch, 5, height, width, generator=gen, dtype=dtype)
    offset = 2.5 * torch.randn(batch, 18, height, width, generator=gen, dtype=dtype)
    weight = torch.randn(4, 5, 3, 3, generator=gen, dtype=dtype) / 6
    bias = torch.randn(4, generator=gen, dtype=dtype)
    return [t.requires_grad_() for t in (x, offset, weight, bias)]


def _reference(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1)


def test_inputs_reach_outside_the_image() -> None:
    # Guards the other tests' coverage: samples fully outside (|offset| > 2 at a border) exist.
    _, offset, _, _ = _inputs()
    dy = offset.detach()[:, 0::2]
    assert (dy[:, :, 0] < -2).any() and (dy[:, :, -1] > 2).any()


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_values_match_torchvision_float32(impl: str) -> None:
    x, offset, weight, bias = (t.detach().float() for t in _inputs())
    out = deform_conv3x3(x, offset, weight, bias, impl=impl)
    assert out.shape == (2, 4, 7, 11)
    assert (out - _reference(x, offset, weight, bias)).abs().max() <= 1e-4


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_gradients_match_torchvision(impl: str) -> None:
    inputs = _inputs(torch.float64)
    grad_out = torch.randn(2, 4, 7, 11, dtype=torch.float64)
    ours = torch.autograd.grad(deform_conv3x3(*inputs, impl=impl), inputs, grad_out)
    theirs = torch.autograd.grad(_reference(*inputs), inputs, grad_out)
    for name, a, b in zip(("x", "offset", "weight", "bias"), ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"d{name}")


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_channels_last_inputs_give_the_same_values_and_gradients(impl: str) -> None:
    inputs = _inputs(torch.float64)
    last = [t.detach().contiguous(memory_format=torch.channels_last).requires_grad_() for t in inputs[:2]]
    grad_out = torch.randn(2, 4, 7, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    out = deform_conv3x3(*last, *inputs[2:], impl=impl)
    # The embedding-bag path answers in the input's layout (no copy); the grid-sample path in NCHW.
    layout = torch.channels_last if impl == "embedding_bag" else torch.contiguous_format
    assert out.is_contiguous(memory_format=layout)
    ours = torch.autograd.grad(out, [*last, *inputs[2:]], grad_out)
    theirs = torch.autograd.grad(_reference(*inputs), inputs, grad_out)
    for name, a, b in zip(("x", "offset", "weight", "bias"), ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"d{name}")


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_gradients_when_only_some_inputs_require_grad(impl: str) -> None:
    # Visual Context Replay feeds detached offsets; the backward must skip (not break on) them.
    x, offset, weight, _ = _inputs(torch.float64)
    offset = offset.detach()
    ours = torch.autograd.grad(deform_conv3x3(x, offset, weight, None, impl=impl).sum(), (x, weight))
    theirs = torch.autograd.grad(_reference(x, offset, weight, None).sum(), (x, weight))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    (only_weight,) = torch.autograd.grad(deform_conv3x3(x.detach(), offset, weight, impl=impl).sum(), weight)
    torch.testing.assert_close(only_weight, theirs[1], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_gradcheck(impl: str) -> None:
    gen = torch.Generator().manual_seed(1)
    shapes = ((1, 2, 4, 5), (1, 18, 4, 5), (3, 2, 3, 3), (3,))
    scales = (1.0, 2.0, 0.3, 1.0)
    x, offset, weight, bias = (
        (s * torch.randn(shape, generator=gen, dtype=torch.float64)).requires_grad_()
        for shape, s in zip(shapes, scales, strict=True)
    )
    assert torch.autograd.gradcheck(lambda *t: deform_conv3x3(*t, impl=impl), (x, offset, weight, bias))


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_zero_offsets_equal_plain_conv(impl: str) -> None:
    x, offset, weight, bias = (t.detach().float() for t in _inputs())
    out = deform_conv3x3(x, torch.zeros_like(offset), weight, bias, impl=impl)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("impl", [*FAST_IMPLS, "torchvision"])
@pytest.mark.parametrize("axis", [0, 1])
def test_offset_layout_dy_then_dx(impl: str, axis: int) -> None:
    # Offset +1 along one axis for every tap reads the conv output one pixel further on that axis.
    x, offset, weight, bias = (t.detach().float() for t in _inputs())
    shift = torch.zeros_like(offset)
    shift[:, axis::2] = 1.0
    out = deform_conv3x3(x, shift, weight, bias, impl=impl)
    conv = F.conv2d(x, weight, bias, padding=1)
    if axis == 0:
        torch.testing.assert_close(out[:, :, :-1], conv[:, :, 1:], rtol=0, atol=1e-5)
    else:
        torch.testing.assert_close(out[..., :-1], conv[..., 1:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_autocast_runs_in_float32(impl: str) -> None:
    # bf16 activations meet fp32 weights under autocast; the op must compute (and return) fp32.
    x, offset, weight, bias = (t.detach().float() for t in _inputs())
    x_bf16, offset_bf16 = x.bfloat16().requires_grad_(), offset.bfloat16()
    weight.requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        out = deform_conv3x3(x_bf16, offset_bf16, weight, bias, impl=impl)
    assert out.dtype == torch.float32
    expected = deform_conv3x3(x_bf16.detach().float(), offset_bf16.float(), weight.detach(), bias, impl=impl)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)  # bf16 compute would be ~1e-2 off
    out.sum().backward()
    assert x_bf16.grad is not None and x_bf16.grad.dtype == torch.bfloat16 and weight.grad is not None


def test_no_grad_and_single_row_maps() -> None:
    # H = 1 is where an align_corners=True grid would divide by zero.
    x, offset, weight, bias = (t.detach() for t in _inputs(size=(1, 6)))
    with torch.no_grad():
        for impl in FAST_IMPLS:
            out = deform_conv3x3(x, offset, weight, bias, impl=impl)
            assert not out.requires_grad
            torch.testing.assert_close(out, _reference(x, offset, weight, bias), rtol=1e-9, atol=1e-9)


def test_module_initialises_like_conv2d() -> None:
    torch.manual_seed(3)
    conv = nn.Conv2d(6, 4, 3)
    torch.manual_seed(3)
    layer = DeformConv3x3(6, 4)
    assert torch.equal(layer.weight, conv.weight) and torch.equal(layer.bias, conv.bias)
    assert DeformConv3x3(6, 4, bias=False).bias is None
    assert [name for name, _ in DeformConv3x3(6, 4).named_parameters()] == ["weight", "bias"]


def test_module_forward_uses_caller_offsets() -> None:
    layer = DeformConv3x3(5, 4, impl="embedding_bag").double()
    x, offset, _, _ = _inputs()
    expected = _reference(x, offset, layer.weight, layer.bias)
    torch.testing.assert_close(layer(x, offset), expected, rtol=1e-9, atol=1e-9)


def test_impl_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_impl("auto", torch.device("cpu")) == "embedding_bag"
    with pytest.raises(ValueError, match="impl"):
        DeformConv3x3(2, 2, impl="bogus")  # type: ignore[arg-type]
    x, offset, weight, bias = (t.detach().float() for t in _inputs())

    calls = []
    real = torchvision.ops.deform_conv2d
    monkeypatch.setattr(torchvision.ops, "deform_conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    for impl, uses_torchvision in (("torchvision", True), ("embedding_bag", False), ("grid_sample", False)):
        calls.clear()
        with FlopCounterMode(display=False) as counter:
            deform_conv3x3(x, offset, weight, bias, impl=impl)
        ops = counter.get_flop_counts().get("Global", {})
        assert bool(calls) == uses_torchvision
        assert (torch.ops.vpnext.deform_conv3x3 in ops) != uses_torchvision


def test_shape_errors() -> None:
    x, offset, weight, _ = (t.detach() for t in _inputs())
    with pytest.raises(ValueError, match="offset"):
        deform_conv3x3(x, offset[:, :9], weight)
    with pytest.raises(ValueError, match="weight"):
        deform_conv3x3(x, offset, weight[:, :2])


@pytest.mark.slow
def test_torch_compile_of_the_op_matches_eager_values_and_gradients() -> None:
    layer = DeformConv3x3(5, 4).double()
    x, offset, _, _ = _inputs()

    def loss(x: Tensor, offset: Tensor) -> Tensor:
        return torch.relu(layer(2 * x, offset + 0.5)).sum()

    compiled = torch.compile(loss)(x, offset)
    torch.testing.assert_close(compiled, loss(x, offset))
    (grad,) = torch.autograd.grad(compiled, x)
    (expected,) = torch.autograd.grad(loss(x, offset), x)
    torch.testing.assert_close(grad, expected)
