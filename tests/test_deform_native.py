"""The native CPU forward of the deformable conv (``vpnext.ops.native``): torchvision's values, used
for inference only, and a clear fallback where it cannot be built."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor

from tests.helpers import torch_threads
from vpnext.models.vitup import HiCLR
from vpnext.ops import deform_conv3x3, native

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler to build the native kernel"
)


LOADER = native.deform_conv3x3


@pytest.fixture(autouse=True)
def _fresh_kernel_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test decides afresh whether the kernel is on (the loader caches its answer per process)."""
    monkeypatch.delenv(native.ENV, raising=False)
    LOADER.cache_clear()
    yield
    LOADER.cache_clear()


class CountingKernel:
    """The real kernel, counting its calls."""

    def __init__(self) -> None:
        self.kernel = native.build()
        self.calls = 0

    def forward(self, *args: object) -> Tensor:
        self.calls += 1
        return self.kernel.forward(*args)


def _inputs(batch: int = 2, channels: int = 5, size: tuple[int, int] = (7, 11), out: int = 4) -> list[Tensor]:
    """Offsets of a few pixels: many samples partly or fully outside the image."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, *size, generator=gen)
    offset = 2.5 * torch.randn(batch, 18, *size, generator=gen)
    weight = torch.randn(out, channels, 3, 3, generator=gen) / 6
    bias = torch.randn(out, generator=gen)
    return [x, offset, weight, bias]


def test_the_kernel_builds() -> None:
    assert native.deform_conv3x3() is not None


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_many_blocks_on_two_threads_under_no_grad_and_inference_mode(mode: str) -> None:
    """Validation runs under ``torch.inference_mode``: the threads that write the blocks' rows must
    run under it too (an inference tensor cannot be written outside it)."""
    x, offset, weight, bias = _inputs(batch=1, channels=48, size=(64, 64), out=48)
    with torch_threads(2), getattr(torch, mode)():
        out = deform_conv3x3(x, offset, weight, bias, impl="native")
        assert out.shape == (1, 48, 64, 64) and out.is_inference() == (mode == "inference_mode")
    expected = torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.backends.openmp.is_available(), reason="torch runs without OpenMP here")
def test_the_kernel_samples_on_all_of_torchs_threads() -> None:
    """Built without OpenMP, ``at::parallel_for`` is a plain loop: the sampling would run on one
    thread whatever ``torch.set_num_threads`` says (it did until 2026-12-06)."""
    kernel = native.build()
    with torch_threads(2):
        assert kernel.parallel_threads(64) == 2
    with torch_threads(1):
        assert kernel.parallel_threads(64) == 1


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize(
    "shape", [(2, 5, (7, 11), 4), (1, 48, (20, 24), 48), (1, 3, (1, 6), 2)], ids=["small", "hiclr", "one_row"]
)
def test_values_match_torchvision(shape: tuple, with_bias: bool, channels_last: bool) -> None:
    x, offset, weight, bias = _inputs(*shape)
    bias = bias if with_bias else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = deform_conv3x3(x, offset, weight, bias, impl="native")
    expected = torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=layout)


def test_auto_runs_it_for_inference_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No gradient needed: the kernel. A gradient needed: the PyTorch path, bit for bit as before."""
    counting = CountingKernel()
    monkeypatch.setattr(native, "deform_conv3x3", lambda: counting)
    x, offset, weight, bias = _inputs()
    with torch.no_grad():
        inference = deform_conv3x3(x, offset, weight, bias)
    assert counting.calls == 1
    torch.testing.assert_close(inference, deform_conv3x3(x, offset, weight, bias, impl="embedding_bag"))

    weight.requires_grad_()
    training = deform_conv3x3(x, offset, weight, bias)
    assert counting.calls == 1
    assert torch.equal(training, deform_conv3x3(x, offset, weight, bias, impl="embedding_bag"))
    training.sum().backward()
    assert weight.grad is not None


def test_native_forward_with_the_pytorch_backward_gives_torchvision_gradients() -> None:
    inputs = [t.requires_grad_() for t in _inputs()]
    grad_out = torch.randn(2, 4, 7, 11, generator=torch.Generator().manual_seed(1))
    ours = torch.autograd.grad(deform_conv3x3(*inputs, impl="native"), inputs, grad_out)
    theirs = torch.autograd.grad(torchvision.ops.deform_conv2d(*inputs, padding=1), inputs, grad_out)
    for name, a, b in zip(("x", "offset", "weight", "bias"), ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"d{name}")


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV, "0")
    assert native.deform_conv3x3() is None
    x, offset, weight, bias = _inputs()
    with torch.no_grad():
        out = deform_conv3x3(x, offset, weight, bias)  # auto: the PyTorch path
        assert torch.equal(out, deform_conv3x3(x, offset, weight, bias, impl="embedding_bag"))
        with pytest.raises(RuntimeError, match=native.ENV):
            deform_conv3x3(x, offset, weight, bias, impl="native")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("Ninja is required to load C++ extensions\nmore lines", "Ninja is required to load C++ extensions)"),
        (
            "Error building extension 'k': [1/2] c++ -MMD -O3 ... 200 lines of compiler output",
            "Error building extension 'k'; `python -m vpnext.ops.native` shows the compiler's output)",
        ),
    ],
    ids=["first_line", "compiler_output_left_out"],
)
def test_a_failed_build_warns_once_in_one_line_and_falls_back(
    message: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing() -> None:
        raise RuntimeError(message)

    monkeypatch.setattr(native, "build", failing)
    with pytest.warns(RuntimeWarning) as caught:
        assert native.deform_conv3x3() is None
    assert len(caught) == 1 and f"could not be built ({reason}; using" in str(caught[0].message)
    x, offset, weight, bias = _inputs()
    with torch.no_grad():
        out = deform_conv3x3(x, offset, weight, bias)  # no second warning: the answer is kept
    torch.testing.assert_close(out, torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1))


def test_no_compiler_is_named_before_anything_is_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # nothing cached there
    monkeypatch.setenv("CXX", "no-such-c++")
    with pytest.warns(RuntimeWarning, match=r"built \(no C\+\+ compiler \(no-such-c\+\+\) on PATH\)"):
        assert native.deform_conv3x3() is None
    assert native.main() == 0  # `make install` goes on without the kernel
    assert "not built (no C++ compiler (no-such-c++) on PATH)" in capsys.readouterr().out
    assert not list(tmp_path.rglob("*.so"))


def test_hiclr_inference_equals_its_training_path() -> None:
    """Inference runs the loop channels-last through the kernel; training runs NCHW in PyTorch."""
    torch.manual_seed(0)
    hiclr = HiCLR(32, 16, depth=2)
    for module in hiclr.modules():  # non-zero offsets, as after training
        if isinstance(module, torch.nn.Conv2d) and module.out_channels % 18 == 0:
            torch.nn.init.normal_(module.weight, std=0.05)
    y, pyramid = torch.randn(2, 32, 5, 6), torch.randn(2, 16, 20, 24)
    training = hiclr(y, pyramid)
    with torch.no_grad():
        inference = hiclr(y, pyramid)
    assert inference.is_contiguous()
    torch.testing.assert_close(inference, training.detach(), rtol=1e-5, atol=1e-5)
