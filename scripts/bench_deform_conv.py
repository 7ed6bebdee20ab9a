"""Benchmark the deformable 3x3 conv implementations against torchvision and a plain conv.

For every shape (B, C, H, W) with C in = C out, times forward (``torch.no_grad``) and
forward+backward (gradients for x, offset, weight, bias) of each implementation. Rounds are
interleaved (every implementation once per round, rotating order) so that load from other
processes hits all of them alike; the table reports medians and ratios to torchvision, the
largest absolute difference from torchvision of the output, and that of every gradient relative
to the gradient's largest entry.

Usage:
    python scripts/bench_deform_conv.py [--shapes 2,256,32,32 ...] [--repeats 5] [--threads N] [--json FILE]
        [--device cuda]

On CUDA every timed call ends with ``torch.cuda.synchronize`` and inputs live on the device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vpnext.ops.deform_conv import DeformConv3x3, deform_conv3x3

DEFAULT_SHAPES = ["2,256,32,32", "2,128,96,128", "1,64,128,128", "2,64,120,120"]
IMPLS = ["embedding_bag", "grid_sample", "torchvision", "conv2d"]


def _make_fn(impl: str) -> Callable[..., torch.Tensor]:
    if impl == "conv2d":
        return lambda x, offset, weight, bias: F.conv2d(x, weight, bias, padding=1)
    return lambda x, offset, weight, bias: deform_conv3x3(x, offset, weight, bias, impl=impl)


def _inputs(
    shape: tuple[int, int, int, int], offset_scale: float, device: torch.device
) -> list[torch.Tensor]:
    batch, channels, height, width = shape
    layer = DeformConv3x3(channels, channels)  # conv-like init keeps outputs O(1)
    x = torch.randn(shape)
    offset = torch.randn(batch, 18, height, width) * offset_scale  # many samples leave the image
    return [t.detach().to(device).requires_grad_() for t in (x, offset, layer.weight, layer.bias)]


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench_shape(
    shape: tuple[int, int, int, int],
    repeats: int,
    warmup: int,
    offset_scale: float,
    device: torch.device | None = None,
) -> list[dict]:
    """Time all implementations at one shape on ``device`` (CPU by default); one row per implementation."""
    device = device or torch.device("cpu")
    inputs = _inputs(shape, offset_scale, device)
    grad_out = torch.randn(shape).to(device)
    fns = {impl: _make_fn(impl) for impl in IMPLS}

    def forward(impl: str) -> None:
        with torch.no_grad():
            fns[impl](*inputs)

    def forward_backward(impl: str) -> None:
        torch.autograd.grad(fns[impl](*inputs), inputs, grad_out, allow_unused=True)

    times: dict[tuple[str, str], list[float]] = {(i, m): [] for i in IMPLS for m in ("fwd", "fwdbwd")}
    for mode, run in (("fwd", forward), ("fwdbwd", forward_backward)):
        for impl in IMPLS:
            for _ in range(warmup):
                run(impl)
        for r in range(repeats):
            for impl in IMPLS[r % len(IMPLS) :] + IMPLS[: r % len(IMPLS)]:
                times[(impl, mode)].append(_timed(lambda impl=impl, run=run: run(impl), device))

    ref_out = fns["torchvision"](*inputs)
    ref_grads = torch.autograd.grad(ref_out, inputs, grad_out)
    rows = []
    for impl in IMPLS:
        out = fns[impl](*inputs)
        grads = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
        # Gradients sum over many positions, so their error is relative to the largest entry.
        errors = {
            f"relerr_{name}": None if g is None else ((g - r).abs().max() / r.abs().max()).item()
            for name, g, r in zip(("dx", "doffset", "dweight", "dbias"), grads, ref_grads, strict=True)
        }
        rows.append(
            {
                "shape": list(shape),
                "impl": impl,
                "fwd_ms": 1e3 * statistics.median(times[(impl, "fwd")]),
                "fwdbwd_ms": 1e3 * statistics.median(times[(impl, "fwdbwd")]),
                "err_out": (out - ref_out).abs().max().item(),
                **errors,
            }
        )
    tv = next(r for r in rows if r["impl"] == "torchvision")
    conv = next(r for r in rows if r["impl"] == "conv2d")
    for row in rows:
        row["fwd_speedup_vs_tv"] = tv["fwd_ms"] / row["fwd_ms"]
        row["fwdbwd_speedup_vs_tv"] = tv["fwdbwd_ms"] / row["fwdbwd_ms"]
        row["fwdbwd_slowdown_vs_conv"] = row["fwdbwd_ms"] / conv["fwdbwd_ms"]
    return rows


def markdown(rows: list[dict]) -> str:
    """Render the rows as a Markdown table (errors vs torchvision; conv2d's are not meaningful)."""
    lines = [
        "| shape | impl | fwd ms | fwd x tv | fwd+bwd ms | fwd+bwd x tv | fwd+bwd / conv2d "
        "| max abs err out | rel err dx | rel err doffset | rel err dweight |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        errs = (
            " | ".join(f"{r[k]:.1e}" for k in ("err_out", "relerr_dx", "relerr_doffset", "relerr_dweight"))
            if r["impl"] != "conv2d"
            else "- | - | - | -"
        )
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} | {r['impl']} | {r['fwd_ms']:.1f} "
            f"| {r['fwd_speedup_vs_tv']:.2f} | {r['fwdbwd_ms']:.1f} | {r['fwdbwd_speedup_vs_tv']:.2f} "
            f"| {r['fwdbwd_slowdown_vs_conv']:.2f} | {errs} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="B,C,H,W (C in = C out)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--offset-scale", type=float, default=2.0, help="std of the random offsets (pixels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (1 avoids stalls when other jobs share the cores)",
    )
    parser.add_argument("--json", type=str, default=None, help="also write the rows to this file")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split(","))
        if len(shape) != 4:
            parser.error(f"shape {text!r} is not B,C,H,W")
        rows += bench_shape(shape, args.repeats, args.warmup, args.offset_scale, device)
    cuda = device.type == "cuda"
    where = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, medians of {args.repeats} rounds")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            meta = {"torch": torch.__version__, "device": where, "threads": torch.get_num_threads()}
            json.dump({**meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
