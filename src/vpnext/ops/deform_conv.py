"""Deformable 3x3 convolution (one offset group, stride 1, padding 1) with a fast CPU path.

Semantics are those of ``torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1)``:
output pixel ``p`` reads, for kernel tap ``k = 3 * i + j``, the bilinear sample of ``x`` at
``p + (i - 1, j - 1) + (offset[:, 2k], offset[:, 2k + 1])`` (``(dy, dx)`` per tap, taps
row-major). Corners outside the image read zero, so a sample partially outside is a weighted sum
of its inside corners and a sample a full pixel or more outside is zero.

Implementations (``impl``):

- ``"embedding_bag"``: the four corners of every sample are gathered from a zero-bordered,
  channels-last copy of ``x`` by ``F.embedding_bag(mode="sum", per_sample_weights=bilinear
  weights)``, in blocks of output rows whose ``(rows, 9*C)`` columns meet the weights in one GEMM
  each. On CPU it measured 3-6x faster than torchvision forward and 8-10x forward+backward, and
  faster than ``"grid_sample"`` at every decoder shape (``scripts/bench_deform_conv.py``).
- ``"grid_sample"``: ``F.grid_sample`` of all nine taps at once (grid ``(B, 9H, W, 2)``) followed
  by the same GEMM. ``align_corners=False`` with ``g = (2p + 1) / size - 1`` is used rather than
  the equivalent ``align_corners=True`` form because it stays defined when H or W is 1.
- ``"torchvision"``: ``torchvision.ops.deform_conv2d``.
- :func:`deform_conv3x3_aten`, not a switch: the ``"grid_sample"`` path without the custom op,
  for exporting the model (``vpnext export``).
- ``"native"``: the forward of :mod:`vpnext.ops.native` (C++, CPU float32: each block of output
  rows sampled straight into a cache-sized buffer and multiplied there, no gather table; compiled
  on first use), the backward of ``"embedding_bag"``.
- ``"auto"``: on CPU, ``"native"`` where no gradient is needed (inference, evaluation; not under
  ``torch.compile``) and the kernel is built, else ``"embedding_bag"``, the fastest PyTorch path
  measured (``scripts/bench_deform_conv.py``), so that training computes exactly what it did before
  the kernel existed; ``"torchvision"`` on other devices (not measured).

The sampling implementations (all but ``"torchvision"``) are one ``torch.library`` op,
``vpnext::deform_conv3x3``, so ``torch.utils.flop_counter.FlopCounterMode`` sees one op and counts
it with :func:`deform_conv_macs`. Its backward recomputes the sampled columns with autograd instead of
keeping them from the forward (less memory, one extra gather), so double backward is not
supported. The op has a fake implementation and its autograd formula traces, so ``torch.compile``
keeps the whole model in one graph with the op as an opaque call (no graph break; tested in
``tests/test_compile.py``).
Under ``torch.autocast`` it computes in float32 and returns float32. The ``"embedding_bag"``
and ``"native"`` paths return their output in the input's memory layout: a channels-last input
(what HiCLR passes) gets a channels-last output straight from the GEMM rows, with no layout copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.utils.flop_counter import register_flop_formula

from vpnext.ops import native

DeformImpl = Literal["auto", "embedding_bag", "grid_sample", "native", "torchvision"]
"""Implementation switch of :func:`deform_conv3x3` (see the module docstring)."""

_TAPS = 9


def _tap_grid(offset: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Absolute sampling coordinates ``(y, x)``, each ``(B, 9, H, W)``, from the offsets."""
    off = offset.unflatten(1, (_TAPS, 2))
    kernel = torch.arange(-1, 2, device=offset.device, dtype=offset.dtype)
    rows = torch.arange(height, device=offset.device, dtype=offset.dtype)
    cols = torch.arange(width, device=offset.device, dtype=offset.dtype)
    # Integer base first, then the offset: the same rounding as torchvision's ``h + i - 1 + dy``.
    base_y = (kernel.repeat_interleave(3).view(_TAPS, 1, 1) + rows.view(1, height, 1)).expand(-1, -1, width)
    base_x = (kernel.repeat(3).view(_TAPS, 1, 1) + cols.view(1, 1, width)).expand(-1, height, -1)
    return off[:, :, 0] + base_y, off[:, :, 1] + base_x


_CHUNK_BYTES = 4 << 20
"""Column block per GEMM in the embedding-bag forward: it stays in cache and in malloc's reused
heap (fresh buffers of tens of MB are page-faulted on every call); 4 MiB measured best of 1/4/16."""


def _corner_table(x: Tensor) -> Tensor:
    """Channels-last rows of ``x`` with a zero border (1 before, 2 after each spatial axis).

    Coordinates clamped to ``[-1, size]`` then always have all 4 corners inside the table, and a
    corner outside the image reads the zero border: torchvision's zero padding without masks.
    """
    batch, channels, height, width = x.shape
    table = x.new_zeros(batch, height + 3, width + 3, channels)
    table[:, 1 : height + 1, 1 : width + 1] = x.permute(0, 2, 3, 1)
    return table.view(-1, channels)


def _bilinear_bags(offset: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Corner rows ``(B*H*W*9, 4)`` of the corner table and their bilinear weights.

    Bags are ordered (b, h, w, tap), so the bags of a block of output positions are contiguous
    and their samples form that block's GEMM rows. Coordinates are clamped to ``[-1, size]``,
    which keeps values and gradients: a sample one pixel or more outside is zero either way, with
    zero gradient as in torchvision. Everything is computed once for all positions: few large ops
    rather than many small ones per block (each op is a parallel region that stalls when other
    processes hold the cores).
    """
    batch = offset.shape[0]
    row_stride = width + 3
    py, px = (t.permute(0, 2, 3, 1) for t in _tap_grid(offset, height, width))
    py, px = py.clamp(-1, height).contiguous(), px.clamp(-1, width).contiguous()
    y0, x0 = py.detach().floor(), px.detach().floor()
    fy, fx = py - y0, px - x0
    image = torch.arange(batch, device=offset.device).view(batch, 1, 1, 1) * ((height + 3) * row_stride)
    top_left = (y0.long() + 1) * row_stride + (x0.long() + 1) + image
    # One flat op per corner: broadcasting against a trailing axis of 2 or 4 runs several times
    # slower on CPU, and this function was half of the forward's time at decoder shapes.
    gy, gx = 1 - fy, 1 - fx
    weights = torch.stack((gy * gx, gy * fx, fy * gx, fy * fx), -1)
    below = top_left + row_stride
    indices = torch.stack((top_left, top_left + 1, below, below + 1), -1)
    return indices.view(-1, 4), weights.view(-1, 4)


def _embedding_bag_forward(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    batch, channels, height, width = x.shape
    table = _corner_table(x)
    indices, weights = _bilinear_bags(offset, height, width)
    matrix_t = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).T  # (9*Cin, Cout), (tap, c) rows
    out = x.new_empty(batch * height * width, weight.shape[0])
    step = max(1, _CHUNK_BYTES // (_TAPS * channels * x.element_size()))
    for first in range(0, out.shape[0], step):
        block, bags = slice(first, first + step), slice(_TAPS * first, _TAPS * (first + step))
        cols = F.embedding_bag(indices[bags], table, per_sample_weights=weights[bags], mode="sum")
        cols = cols.view(-1, _TAPS * channels)
        if bias is None:
            torch.mm(cols, matrix_t, out=out[block])
        else:
            torch.addmm(bias, cols, matrix_t, out=out[block])
    return _in_layout_of(x, out.view(batch, height, width, -1).permute(0, 3, 1, 2))


_NATIVE_BLOCK_BYTES = 1 << 20
"""Columns per thread and GEMM in the native forward (a 1 MiB buffer that stays in cache)."""


def _native_forward(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    kernel = native.deform_conv3x3()
    if kernel is None:
        raise RuntimeError(f"impl='native': the native kernel is off ({native.ENV}=0) or failed to build")
    block = max(16, _NATIVE_BLOCK_BYTES // (_TAPS * x.shape[1] * 4))
    return _in_layout_of(x, kernel.forward(x, offset, weight, bias, block))


def _channels_last(x: Tensor) -> bool:
    """Whether ``x`` is stored channels-last (and not also plain contiguous, as 1-channel maps are)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _in_layout_of(x: Tensor, out: Tensor) -> Tensor:
    """``out`` in ``x``'s memory layout: channels-last stays channels-last (no copy), else NCHW."""
    return out.contiguous(memory_format=torch.channels_last if _channels_last(x) else torch.contiguous_format)


def _embedding_bag_columns(x: Tensor, offset: Tensor) -> Tensor:
    """All columns ``(B*H*W, 9*C)`` at once, differentiable (the backward's recomputation)."""
    indices, weights = _bilinear_bags(offset, *x.shape[2:])
    cols = F.embedding_bag(indices, _corner_table(x), per_sample_weights=weights, mode="sum")
    return cols.view(-1, _TAPS * x.shape[1])


def _embedding_bag_backward(
    x: Tensor, offset: Tensor, weight: Tensor, grad_out: Tensor, needs: tuple[bool, bool, bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    grad_rows = grad_out.permute(0, 2, 3, 1).reshape(-1, weight.shape[0])  # (B*H*W, Cout)
    x_r, offset_r, cols = _recompute(_embedding_bag_columns, x, offset, needs)
    grad_weight = None
    if needs[2]:
        grad_matrix = grad_rows.T @ cols.detach()
        grad_weight = grad_matrix.view(weight.shape[0], 3, 3, -1).permute(0, 3, 1, 2)
    matrix = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
    return (*_sampling_grads(cols, x_r, offset_r, lambda: grad_rows @ matrix, needs), grad_weight)


def _grid_sample_columns(x: Tensor, offset: Tensor) -> Tensor:
    """Bilinear samples as a ``(B, C*9, H*W)`` matrix, rows ordered (channel, tap)."""
    batch, channels, height, width = x.shape
    py, px = _tap_grid(offset, height, width)
    grid = torch.stack(((2 * px + 1) / width - 1, (2 * py + 1) / height - 1), dim=-1)
    grid = grid.view(batch, _TAPS * height, width, 2)
    samples = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return samples.view(batch, channels * _TAPS, height * width)


def _grid_sample_forward(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    out = weight.flatten(1) @ _grid_sample_columns(x, offset)
    out = out if bias is None else out.add_(bias.view(1, -1, 1))
    return out.view(x.shape[0], weight.shape[0], *x.shape[2:])


def _grid_sample_backward(
    x: Tensor, offset: Tensor, weight: Tensor, grad_out: Tensor, needs: tuple[bool, bool, bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    grad_flat = grad_out.flatten(2)  # (B, Cout, H*W)
    x_r, offset_r, cols = _recompute(_grid_sample_columns, x, offset, needs)
    grad_weight = (grad_flat @ cols.detach().mT).sum(0).view_as(weight) if needs[2] else None
    grads = _sampling_grads(cols, x_r, offset_r, lambda: weight.flatten(1).T @ grad_flat, needs)
    return (*grads, grad_weight)


def _recompute(
    columns: Callable[[Tensor, Tensor], Tensor], x: Tensor, offset: Tensor, needs: tuple[bool, bool, bool]
) -> tuple[Tensor, Tensor, Tensor]:
    """Columns rebuilt with autograd (checkpoint-style: the forward keeps no B*H*W*9*C buffer)."""
    with torch.enable_grad():
        x_r = x.detach().requires_grad_(needs[0])
        offset_r = offset.detach().requires_grad_(needs[1])
        return x_r, offset_r, columns(x_r, offset_r)


def _sampling_grads(
    cols: Tensor,
    x_r: Tensor,
    offset_r: Tensor,
    grad_cols: Callable[[], Tensor],
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of x and offset through the sampling, given the columns' gradient."""
    wanted = [t for t, need in zip((x_r, offset_r), needs[:2], strict=False) if need]
    if not wanted:
        return None, None
    grads = iter(torch.autograd.grad(cols, wanted, grad_cols()))
    return (next(grads) if needs[0] else None, next(grads) if needs[1] else None)


class _Impl(NamedTuple):
    forward: Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]
    backward: Callable[..., tuple[Tensor | None, Tensor | None, Tensor | None]]


_IMPLS = {
    "embedding_bag": _Impl(_embedding_bag_forward, _embedding_bag_backward),
    "native": _Impl(_native_forward, _embedding_bag_backward),
    "grid_sample": _Impl(_grid_sample_forward, _grid_sample_backward),
}


@torch.library.custom_op("vpnext::deform_conv3x3", mutates_args=())
def _deform_conv3x3_op(
    x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, sampler: str
) -> Tensor:
    """One op for ``FlopCounterMode``; ``sampler`` is a key of ``_IMPLS``."""
    return _IMPLS[sampler].forward(x, offset, weight, bias)


@_deform_conv3x3_op.register_fake
def _(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, sampler: str) -> Tensor:
    out = x.new_empty(x.shape[0], weight.shape[0], *x.shape[2:])
    return _in_layout_of(x, out) if sampler in ("embedding_bag", "native") else out


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, offset, weight, _, sampler = inputs
    ctx.save_for_backward(x, offset, weight)
    ctx.sampler = sampler


def _backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
    x, offset, weight = ctx.saved_tensors
    needs = tuple(ctx.needs_input_grad[:3])
    grad_bias = grad_out.sum((0, 2, 3)) if ctx.needs_input_grad[3] else None
    grads = _IMPLS[ctx.sampler].backward(x, offset, weight, grad_out, needs) if any(needs) else (None,) * 3
    return (*grads, grad_bias, None)


_deform_conv3x3_op.register_autograd(_backward, setup_context=_setup_context)
# Under autocast the op runs in float32, as torchvision's deform_conv2d does: sampling
# coordinates in bfloat16 are off by whole pixels beyond 256 (8-bit mantissa).
for _device in ("cpu", "cuda"):
    torch.library.register_autocast(_deform_conv3x3_op, _device, torch.float32)


def deform_conv_macs(in_channels: int, weight_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """MACs of a deformable conv: the GEMM of a plain conv plus 4 MACs per bilinear sample.

    Convention: every output position, kernel tap and input channel reads one bilinear sample, a
    weighted sum of 4 corners (4 MACs); computing corner indices and weights, bias adds and
    DCNv2 mask modulation are not counted. The GEMM is that of a plain conv of the same shape.

    Args:
        in_channels: Input channels.
        weight_shape: ``(Cout, Cin / groups, kh, kw)``.
        out_shape: ``(B, Cout, H_out, W_out)``.
    """
    positions = out_shape[0] * out_shape[2] * out_shape[3]
    taps = weight_shape[2] * weight_shape[3]
    return positions * (math.prod(weight_shape) + taps * in_channels * 4)


@register_flop_formula(torch.ops.vpnext.deform_conv3x3)
def _deform_conv3x3_flops(
    x_shape: torch.Size,
    offset_shape: torch.Size,
    weight_shape: torch.Size,
    *args: Any,
    out_shape: torch.Size,
    **kwargs: Any,
) -> int:
    """``FlopCounterMode`` formula (2 FLOPs per MAC) of ``vpnext::deform_conv3x3``."""
    return 2 * deform_conv_macs(x_shape[1], weight_shape, out_shape)


def resolve_impl(impl: DeformImpl, device: torch.device) -> str:
    """The concrete implementation ``"auto"`` stands for on ``device`` (others pass through)."""
    if impl == "auto":
        return "embedding_bag" if device.type == "cpu" else "torchvision"
    if impl not in get_args(DeformImpl):
        raise ValueError(f"unknown deformable conv impl {impl!r}")
    return impl


def _native_applies(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether ``"auto"`` on CPU runs the native forward: no gradient needed, float32 (or autocast,
    which casts the op's inputs to float32), not inside ``torch.compile`` (whose graphs keep the
    PyTorch path: the kernel's loader is not traceable), and the kernel built."""
    if torch.compiler.is_compiling():
        return False
    tensors = [t for t in (x, offset, weight, bias) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if not (all(t.dtype == torch.float32 for t in tensors) or torch.is_autocast_enabled("cpu")):
        return False
    return native.deform_conv3x3() is not None


def deform_conv3x3(
    x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, impl: DeformImpl = "auto"
) -> Tensor:
    """Deformable 3x3 convolution, stride 1, padding 1, one offset group.

    Args:
        x: Input ``(B, Cin, H, W)``.
        offset: Offsets ``(B, 18, H, W)``: ``(dy, dx)`` per tap, taps row-major (torchvision's
            layout).
        weight: Kernel ``(Cout, Cin, 3, 3)``.
        bias: Optional ``(Cout,)``.
        impl: Implementation, see the module docstring; all give the same values and gradients.

    Returns:
        Output ``(B, Cout, H, W)``.
    """
    if weight.shape[1:] != (x.shape[1], 3, 3):
        raise ValueError(f"weight {tuple(weight.shape)} does not fit a 3x3 conv on {tuple(x.shape)}")
    if offset.shape != (x.shape[0], 2 * _TAPS, *x.shape[2:]):
        raise ValueError(f"offset {tuple(offset.shape)} must be (B, 18, H, W) for x {tuple(x.shape)}")
    concrete = resolve_impl(impl, x.device)
    if impl == "auto" and concrete == "embedding_bag" and _native_applies(x, offset, weight, bias):
        concrete = "native"
    if concrete == "torchvision":
        return torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1)
    return _deform_conv3x3_op(x, offset, weight, bias, concrete)


def deform_conv3x3_aten(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The ``"grid_sample"`` implementation as plain aten ops, outside ``vpnext::deform_conv3x3``.

    What ``torch.export``, ONNX and TorchScript can trace (``vpnext export``): a custom op would
    appear in their graphs as a call that only this Python package can run. Same values as
    :func:`deform_conv3x3`; gradients come from autograd through ``grid_sample``.
    """
    return _grid_sample_forward(x, offset, weight, bias)


class DeformConv3x3(nn.Module):
    """Deformable 3x3 conv layer; the caller supplies the offsets.

    The layer does not own an offset predictor because Visual Context Replay (paper, Eqs. 2-3)
    applies the final layer's offsets to an intermediate layer's deformable conv.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        bias: Whether to add a learnable bias.
        impl: Implementation switch of :func:`deform_conv3x3`.
    """

    def __init__(
        self, in_channels: int, out_channels: int, bias: bool = True, impl: DeformImpl = "auto"
    ) -> None:
        super().__init__()
        resolve_impl(impl, torch.device("cpu"))  # fail at construction on a typo
        self.impl = impl
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise like ``nn.Conv2d``: kaiming-uniform(a=sqrt(5)) weight, U(+-1/sqrt(fan_in)) bias."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        """Apply the deformable conv to ``x`` (B, Cin, H, W) at ``offset`` (B, 18, H, W)."""
        return deform_conv3x3(x, offset, self.weight, self.bias, self.impl)

    def extra_repr(self) -> str:
        in_channels, out_channels = self.weight.shape[1], self.weight.shape[0]
        return f"{in_channels}, {out_channels}, bias={self.bias is not None}, impl={self.impl!r}"
