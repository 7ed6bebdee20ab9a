"""How fast HiCLR could run at best on this CPU: its matmuls alone against the backbone's rate.

Issue 23 asks for HiCLR's iterations at >= 0.6 of the backbone's GMAC/s. Each iteration is two
matmul-like ops plus work that counts no MACs (bilinear sampling weights, GroupNorm, GELU, the
residual add):

- the offset conv's ``u`` part: a 3x3 conv from the pyramid width (48) to 18 offsets;
- the deformable conv's GEMM: ``(positions, 9 * 48) @ (9 * 48, 48)``, in the 4 MiB row blocks
  the ``embedding_bag`` forward uses, on columns sampled beforehand.

This script times, in one process and in interleaved rounds: the timm ViT-S/16 backbone at
512x512 (the reference rate), HiCLR's three iterations as the model runs them (``impl="auto"``: the
native kernel of :mod:`vpnext.ops.native` where it is built) and with the PyTorch sampling
(``impl="embedding_bag"``), and those two matmuls alone at the same shapes. The matmuls' time is a
floor for the iterations (no sampling, norm or activation can make them cheaper), so HiCLR's MACs
over that time, divided by the backbone's rate, is the highest ratio any implementation of the
sampling could reach with these GEMMs. MACs are counted as ``vpnext benchmark`` counts them
(:func:`vpnext.models.macs.count_macs`: fused attention's matmuls and the deformable conv's 4 MACs
per sample included).

    python scripts/bench_hiclr_bound.py [--rounds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpnext.memory import setting, tune_malloc
from vpnext.models.macs import count_macs
from vpnext.models.vitup import HiCLR
from vpnext.ops.deform_conv import _CHUNK_BYTES, _TAPS, _embedding_bag_columns

IMAGE, PATCH, DIM, PYRAMID_DIM, DEPTH = 512, 16, 384, 48, 3


def _macs(fn: Callable[[], object]) -> int:
    """MACs of ``fn()`` with vpnext's formulas (fused attention and the deformable conv included)."""
    return count_macs(nn.Identity(), call=lambda: fn()).macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    tune_malloc()  # as the vpnext command runs (VPNEXT_MALLOC=0: glibc's defaults)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)

    vit = timm.create_model("vit_small_patch16_224", img_size=IMAGE, num_classes=0).eval()
    image = torch.randn(1, 3, IMAGE, IMAGE)
    side = IMAGE // 4
    hiclr = HiCLR(256, PYRAMID_DIM, depth=DEPTH).eval()
    for module in hiclr.modules():  # offset convs small but non-zero, as after training
        if isinstance(module, torch.nn.Conv2d) and module.out_channels % 18 == 0:
            torch.nn.init.normal_(module.weight, std=0.02)
    u = torch.randn(1, PYRAMID_DIM, side, side)
    h = F.interpolate(hiclr.lateral(torch.randn(1, 256, IMAGE // PATCH, IMAGE // PATCH)), size=(side, side))
    offsets = hiclr.context_offsets(h).chunk(DEPTH, 1)

    def iterations(impl: str = "auto") -> Tensor:
        for step in hiclr.steps:
            step.deform.impl = impl
        x = u.contiguous(memory_format=torch.channels_last)  # as HiCLR.forward runs it at inference
        for step, context in zip(hiclr.steps, offsets, strict=True):
            x = step(x, context)
        return x.contiguous()

    # The matmuls alone: each step's u-part offset conv, and its deformable GEMM on columns
    # sampled beforehand (outside the timing), blocked as the embedding_bag forward blocks them.
    columns = [
        _embedding_bag_columns(u, context + step.offset_conv(u))
        for step, context in zip(hiclr.steps, offsets, strict=True)
    ]
    matrices = [s.deform.weight.permute(0, 2, 3, 1).reshape(PYRAMID_DIM, -1).T for s in hiclr.steps]
    out = torch.empty(side * side, PYRAMID_DIM)
    block = max(1, _CHUNK_BYTES // (_TAPS * PYRAMID_DIM * 4))

    def matmuls() -> None:
        for step, cols, matrix in zip(hiclr.steps, columns, matrices, strict=True):
            step.offset_conv(u)
            for first in range(0, cols.shape[0], block):
                torch.mm(cols[first : first + block], matrix, out=out[first : first + block])

    parts = {
        "backbone": lambda: vit(image),
        "hiclr": iterations,
        "hiclr_embedding_bag": lambda: iterations("embedding_bag"),
        "hiclr_matmuls": matmuls,
    }
    torch.testing.assert_close(iterations(), iterations("embedding_bag"), atol=1e-4, rtol=1e-4)
    macs = {name: _macs(fn) for name, fn in parts.items()}
    macs["hiclr_matmuls"] = macs["hiclr"]  # the same MACs: the sampling's 4 per sample included
    for fn in parts.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(args.rounds):
        for name, fn in parts.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    rate = {name: macs[name] / ms[name] / 1e6 for name in parts}
    figures = {
        "threads": torch.get_num_threads(),
        "malloc": setting(),
        "ms": ms,
        "gmacs": {name: m / 1e9 for name, m in macs.items()},
        "gmac_per_s": rate,
        "hiclr_over_backbone_rate": rate["hiclr"] / rate["backbone"],
        "hiclr_embedding_bag_over_backbone_rate": rate["hiclr_embedding_bag"] / rate["backbone"],
        "ceiling_over_backbone_rate": rate["hiclr_matmuls"] / rate["backbone"],
    }
    for name in parts:
        print(f"{name:14s} {ms[name]:8.2f} ms {macs[name] / 1e9:7.3f} GMACs {rate[name]:6.1f} GMAC/s")
    print(f"malloc: {figures['malloc']}")
    print(f"HiCLR / backbone rate: {figures['hiclr_over_backbone_rate']:.2f} (auto: native kernel if built)")
    print(f"HiCLR / backbone rate, PyTorch sampling: {figures['hiclr_embedding_bag_over_backbone_rate']:.2f}")
    print(f"ceiling (its matmuls alone) / backbone rate: {figures['ceiling_over_backbone_rate']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
