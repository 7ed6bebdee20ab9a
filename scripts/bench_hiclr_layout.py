"""HiCLR's refinement loop in NCHW against channels-last, timed in one run (interleaved rounds).

The efficient preset's shapes for ViT-S/16 at 512x512: 3 iterations over a 48-channel 1/4 map
(128x128), offset convs initialised small but non-zero (as after training; at their zero init
every sample falls on a pixel). Both layouts must give the same values (float rounding aside).

    python scripts/bench_hiclr_layout.py [--rounds 25]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from vpnext.models.vitup import HiCLR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    hiclr = HiCLR(256, 48, depth=3).eval()
    for module in hiclr.modules():
        if isinstance(module, torch.nn.Conv2d) and module.out_channels % 18 == 0:
            torch.nn.init.normal_(module.weight, std=0.02)  # offset convs
    y, pyramid = torch.randn(1, 256, 32, 32), torch.randn(1, 48, 128, 128)
    h = F.interpolate(hiclr.lateral(y), size=(128, 128), mode="bilinear")
    offsets = hiclr.context_offsets(h).chunk(3, 1)
    last = torch.channels_last

    def loop(u: torch.Tensor, context: list[torch.Tensor]) -> torch.Tensor:
        for step, c in zip(hiclr.steps, context, strict=True):
            u = step(u, c)
        return u

    inputs = {
        "nchw": (pyramid, list(offsets)),
        "channels_last": (
            pyramid.contiguous(memory_format=last),
            [c.contiguous(memory_format=last) for c in offsets],
        ),
    }
    torch.testing.assert_close(loop(*inputs["nchw"]), loop(*inputs["channels_last"]), atol=1e-4, rtol=1e-4)
    for u, c in inputs.values():
        for _ in range(3):
            loop(u, c)
    times: dict[str, list[float]] = {name: [] for name in inputs}
    for _ in range(args.rounds):
        for name, (u, c) in inputs.items():
            start = time.perf_counter()
            loop(u, c)
            times[name].append(time.perf_counter() - start)
    medians = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    gmacs = 1.486  # 3 iterations at these shapes (`vpnext flops`: upsampler.steps)
    print(
        json.dumps(
            {f"{k}_ms": v for k, v in medians.items()}
            | {f"{k}_gmac_per_s": gmacs / v * 1e3 for k, v in medians.items()},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
