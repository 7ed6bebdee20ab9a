"""Multiply-accumulate (MAC) counting with per-part attribution, for the paper's Table III.

The paper's "GFlops" are MACs (DESIGN.md 4). Counting uses ``torch.utils.flop_counter``
(``FlopCounterMode`` reports 2 FLOPs per MAC for matmul-like ops; we halve its total) with
formulas for ops it would count as zero:

- fused scaled-dot-product attention on CPU (and the other fused variants without a built-in
  formula): the ``Q K^T`` and ``attention · V`` matmuls, ``B·h·Nq·Nk·(d + d_v)`` MACs; softmax and
  scaling are not counted, as for every other elementwise op;
- ``torchvision::deform_conv2d`` and ``vpnext::deform_conv3x3``: the MACs of a plain conv of the
  same shape plus 4 MACs per bilinear sample per input channel per tap
  (:func:`vpnext.ops.deform_conv.deform_conv_macs`), so both implementations count the same;
- ``grid_sample`` (bilinear, as the multi-scale deformable attention of ``head='mask2former'``
  samples with it): 4 MACs per output value, the same count as the deformable conv's samples.

Norms, activations, softmax, bias adds and resizes count zero, as in ``FlopCounterMode`` and
fvcore. Every op is attributed to the nearest module on the execution stack whose name falls
under one of the ``groups`` prefixes (the innermost one that matches), else to ``"other"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vpnext.ops.deform_conv import deform_conv_macs

if TYPE_CHECKING:
    from vpnext.models.vpnext import VPNeXt

__all__ = ["GROUPS", "OTHER", "MacReport", "count_macs", "measure_macs"]

OTHER = "other"
"""Group of ops and parameters outside every requested prefix."""


def _attention_flops(query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size) -> int:
    """FLOPs (2 per MAC) of ``softmax(Q K^T) V`` with Q (B, h, Nq, d), K (B, hk, Nk, d), V (B, hk, Nk, dv)."""
    batch, heads, queries, dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * queries * keys * (dim + value_dim)


def _sdpa_flops(
    query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *args: Any, **kwargs: Any
) -> int:
    return _attention_flops(query_shape, key_shape, value_shape)


def _torchvision_deform_flops(
    x_shape: torch.Size, weight_shape: torch.Size, *args: Any, out_shape: torch.Size, **kwargs: Any
) -> int:
    return 2 * deform_conv_macs(x_shape[1], weight_shape, out_shape)


def _grid_sample_flops(
    input_shape: torch.Size, grid_shape: torch.Size, *args: Any, out_shape: torch.Size, **kwargs: Any
) -> int:
    return 2 * 4 * math.prod(out_shape)


def _extra_formulas() -> dict[Any, Callable[..., int]]:
    """Formulas for ops ``FlopCounterMode`` has none for, keyed by op packet (absent ops skipped)."""
    sdpa_ops = (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable",
        "_scaled_dot_product_attention_math_for_mps",
    )
    formulas: dict[Any, Callable[..., int]] = {
        getattr(torch.ops.aten, name): _sdpa_flops for name in sdpa_ops if hasattr(torch.ops.aten, name)
    }
    formulas[torch.ops.torchvision.deform_conv2d] = _torchvision_deform_flops
    formulas[torch.ops.aten.grid_sampler_2d] = _grid_sample_flops
    # vpnext::deform_conv3x3 registers its own formula globally in vpnext.ops.deform_conv.
    return formulas


@dataclass
class MacReport:
    """Result of :func:`count_macs`.

    Attributes:
        macs: Multiply-accumulates of one forward pass.
        params: Number of parameters of the model (all, trainable or not).
        by_group: MACs per group, including ``"other"``; sums to ``macs``.
        params_by_group: Parameters per group by parameter name, including ``"other"``.
    """

    macs: int
    params: int
    by_group: dict[str, int]
    params_by_group: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: totals and a ``groups`` entry with ``gmacs``/``params_m`` per group."""
        return {
            "macs": self.macs,
            "gmacs": self.macs / 1e9,
            "params": self.params,
            "params_m": self.params / 1e6,
            "groups": {
                name: {
                    "macs": macs,
                    "gmacs": macs / 1e9,
                    "params": self.params_by_group.get(name, 0),
                    "params_m": self.params_by_group.get(name, 0) / 1e6,
                }
                for name, macs in self.by_group.items()
            },
        }


def _prefix_matcher(groups: dict[str, str]) -> Callable[[str], str | None]:
    """Name -> group whose prefix is the longest one covering the name (None if none does)."""
    ordered = sorted(groups.items(), key=lambda item: len(item[1]), reverse=True)

    def match(name: str) -> str | None:
        for group, prefix in ordered:
            if prefix == "" or name == prefix or name.startswith(prefix + "."):
                return group
        return None

    return match


@torch.no_grad()
def count_macs(
    model: nn.Module,
    *inputs: Any,
    groups: dict[str, str] | None = None,
    call: Callable[..., Any] | None = None,
) -> MacReport:
    """Count the MACs of ``model(*inputs)`` (one pass, ``torch.no_grad``, current train/eval mode).

    Args:
        model: The model whose modules the ops are attributed to.
        *inputs: Positional inputs of ``model``.
        groups: Report group name -> module-name prefix (``named_modules`` names, e.g.
            ``{"backbone": "backbone", "head": "head"}``). An op belongs to the innermost module
            being executed that lies under a prefix (longest prefix wins); ops outside all of
            them go to ``"other"``.
        call: What to run instead of ``model`` itself, e.g. ``model.forward_train``.

    Returns:
        The :class:`MacReport`.
    """
    groups = dict(groups or {})
    if OTHER in groups:
        raise ValueError(f"group name {OTHER!r} is reserved for unmatched ops")
    match = _prefix_matcher(groups)
    by_group = dict.fromkeys([*groups, OTHER], 0)
    params_by_group = dict.fromkeys([*groups, OTHER], 0)
    for name, param in model.named_parameters():
        params_by_group[match(name) or OTHER] += param.numel()

    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    # Group of each module on the execution stack; a module under no prefix inherits its caller's.
    stack: list[str] = []
    counted = 0

    def settle() -> None:
        # Everything counted since the last module boundary ran in the current innermost module.
        nonlocal counted
        total = counter.get_total_flops()
        by_group[stack[-1] if stack else OTHER] += total - counted
        counted = total

    def make_hooks(name: str) -> tuple[Callable[..., None], Callable[..., None]]:
        own = match(name)

        def enter(module: nn.Module, args: Any) -> None:
            settle()
            stack.append(own or (stack[-1] if stack else OTHER))

        def leave(module: nn.Module, args: Any, output: Any) -> None:
            settle()
            stack.pop()

        return enter, leave

    handles = []
    try:
        for name, module in model.named_modules():
            enter, leave = make_hooks(name)
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave, always_call=True))
        with counter:
            (call or model)(*inputs)
        settle()
    finally:
        for handle in handles:
            handle.remove()
    # FlopCounterMode counts 2 FLOPs per MAC for every formula, ours included.
    by_group = {name: flops // 2 for name, flops in by_group.items()}
    return MacReport(
        macs=sum(by_group.values()),
        params=sum(p.numel() for p in model.parameters()),
        by_group=by_group,
        params_by_group=params_by_group,
    )


#: Report group -> module-name prefix inside :class:`~vpnext.models.VPNeXt`.
GROUPS = {name: name for name in ("backbone", "pyramid_embed", "head", "upsampler", "aux")}


def measure_macs(
    model: VPNeXt, image_size: tuple[int, int], batch_size: int = 1, train_forward: bool = False
) -> dict[str, Any]:
    """Inference MACs and parameters of ``model`` per part (the model is put in eval mode).

    Args:
        model: The model.
        image_size: Input ``(height, width)``.
        batch_size: Images per forward pass.
        train_forward: Count :meth:`~vpnext.models.VPNeXt.forward_train` in training mode instead
            (auxiliary branches run). Not an inference cost: for comparing with counters that ran
            the model in training mode.

    Returns:
        :meth:`MacReport.to_dict` plus ``decoder_gmacs`` (everything but the
        backbone) and ``inference_params_m`` (parameters without the training-only ``aux``).
    """
    model.train(train_forward)
    device = next(model.parameters()).device
    images = torch.randn(batch_size, 3, *image_size, device=device)
    call = model.forward_train if train_forward else None
    report = count_macs(model, images, groups=GROUPS, call=call).to_dict()
    groups = report["groups"]
    report["decoder_gmacs"] = report["gmacs"] - groups["backbone"]["gmacs"]
    report["inference_params_m"] = report["params_m"] - groups["aux"]["params_m"]
    return report
