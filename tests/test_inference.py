"""Sliding-window and multi-scale + flip inference."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from vpnext.evaluation.inference import (
    inference,
    ms_flip_inference,
    resize_to,
    slide_inference,
    whole_inference,
    window_starts,
)

NUM_CLASSES = 4


def _pointwise_model() -> nn.Module:
    # A 1x1 conv sees one pixel, so it gives the same value whichever window a pixel is cut in: the
    # only stand-in for which sliding and whole inference must agree (a 3x3 conv's zero padding
    # differs at window borders).
    torch.manual_seed(0)
    return nn.Conv2d(3, NUM_CLASSES, kernel_size=1).eval()


@pytest.mark.parametrize(
    ("length", "crop", "stride", "expected"),
    [
        (520, 480, 320, [0, 40]),
        (480, 480, 320, [0]),
        (100, 480, 320, [0]),
        (1000, 480, 320, [0, 320, 520]),
        (2048, 768, 512, [0, 512, 1024, 1280]),
    ],
)
def test_window_starts(length: int, crop: int, stride: int, expected: list[int]) -> None:
    starts = window_starts(length, crop, stride)
    assert starts == expected
    assert len(starts) == max(length - crop + stride - 1, 0) // stride + 1
    assert min(starts[-1] + crop, length) == length  # the last window reaches the edge


def test_window_starts_rejects_gaps() -> None:
    with pytest.raises(ValueError):
        window_starts(100, 20, 30)


@pytest.mark.parametrize("size", [(20, 28), (32, 48), (50, 70), (32, 90)])
@torch.no_grad()
def test_slide_equals_whole_for_pointwise_model(size: tuple[int, int]) -> None:
    model = _pointwise_model()
    image = torch.randn(2, 3, *size)
    calls: list[tuple[int, int]] = []

    def model_fn(x: Tensor) -> Tensor:
        calls.append(tuple(x.shape[-2:]))
        return model(x)

    crop, stride = (32, 48), (20, 30)
    slid = slide_inference(model_fn, image, NUM_CLASSES, crop, stride)
    torch.testing.assert_close(slid, whole_inference(model, image), rtol=1e-6, atol=1e-6)
    tops, lefts = window_starts(size[0], 32, 20), window_starts(size[1], 48, 30)
    assert len(calls) == len(tops) * len(lefts)
    # Windows are never padded or resized by the slider: smaller images go in as they are.
    assert all(h == min(32, size[0]) and w == min(48, size[1]) for h, w in calls)


@torch.no_grad()
def test_slide_averages_overlaps() -> None:
    # A stand-in whose output is constant 1 in every window: any count-map mistake shows up.
    image = torch.zeros(1, 3, 50, 70)
    ones = lambda x: torch.ones(x.shape[0], 2, *x.shape[-2:])  # noqa: E731
    assert torch.equal(slide_inference(ones, image, 2, (32, 48), (20, 30)), torch.ones(1, 2, 50, 70))


@torch.no_grad()
def test_ms_single_scale_no_flip_is_softmax_of_single_scale() -> None:
    model = _pointwise_model()
    image = torch.randn(1, 3, 40, 56)
    for mode, crop, stride in [("whole", None, None), ("slide", (32, 32), (16, 16))]:
        ss = inference(model, image, NUM_CLASSES, mode, crop, stride)
        ms = ms_flip_inference(
            model, image, NUM_CLASSES, scales=(1.0,), flip=False, mode=mode, crop=crop, stride=stride
        )
        torch.testing.assert_close(ms, ss.softmax(dim=1), rtol=0, atol=1e-7)


@torch.no_grad()
def test_flip_averages_flipped_pass_unflipped() -> None:
    # Logits that depend on the column make the flipped pass differ from the plain one.
    def model_fn(x: Tensor) -> Tensor:
        ramp = torch.linspace(-3, 3, x.shape[-1]).expand(x.shape[0], 1, x.shape[-2], -1)
        return torch.cat([ramp, -ramp, x[:, :1]], dim=1)

    image = torch.randn(1, 3, 8, 10)
    plain = model_fn(image).softmax(1)
    flipped = model_fn(image.flip(-1)).flip(-1).softmax(1)
    assert not torch.allclose(plain, flipped)
    ms = ms_flip_inference(model_fn, image, 3, scales=(1.0,), flip=True)
    torch.testing.assert_close(ms, (plain + flipped) / 2)


@torch.no_grad()
def test_multi_scale_returns_probabilities_at_input_size() -> None:
    model = _pointwise_model()
    image = torch.randn(2, 3, 30, 44)
    sizes: list[tuple[int, int]] = []

    def model_fn(x: Tensor) -> Tensor:
        sizes.append(tuple(x.shape[-2:]))
        return model(x)

    probs = ms_flip_inference(model_fn, image, NUM_CLASSES, scales=(0.5, 1.25), flip=True)
    assert probs.shape == (2, NUM_CLASSES, 30, 44)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 30, 44))
    assert sizes == [(15, 22), (15, 22), (38, 55), (38, 55)]


def test_resize_to() -> None:
    logits = torch.randn(1, 2, 5, 7)
    assert resize_to(logits, (5, 7)) is logits
    assert resize_to(logits, (10, 14)).shape == (1, 2, 10, 14)


def test_wrong_output_shape_is_reported() -> None:
    with pytest.raises(ValueError, match="model_fn returned"):
        slide_inference(lambda x: x, torch.zeros(1, 3, 8, 8), 4, (4, 4), (4, 4))
