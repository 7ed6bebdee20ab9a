"""``vpnext export``: a trained checkpoint's inference graph as ONNX, TorchScript or an ExportedProgram.

The graph is one eval-mode forward pass of :class:`~vpnext.models.VPNeXt`: normalised images
(B, 3, H, W) in, logits (B, K, H, W) out. It holds no auxiliary branch (VCR, deep supervision and
naive align run only in training, and their weights are dropped), and its deformable
convolutions are the pure-aten ``grid_sample`` path (:func:`vpnext.ops.deform_conv.deform_conv3x3_aten`)
instead of the ``vpnext::deform_conv3x3`` custom op, so the file runs without this package.
Batch, height and width are dynamic in ``onnx`` and ``exported-program`` (``torch.export`` with
``Dim.DYNAMIC``); ``torchscript`` is traced at an example whose size needs padding and a resampled
position embedding, so the recorded ops cover other sizes too (checked, below).

Pre- and post-processing stay outside the graph and are written next to it as ``<file>.json``:
the normalisation (``(x / 255 - mean) / std`` on RGB), the test resize, the evaluation protocol
(sliding window, scales), class names and palette, and the measured difference to PyTorch.

Usage::

    vpnext export --ckpt_path RUN/checkpoints/best.ckpt --format onnx [--output FILE]
                  [--height H --width W] [--atol 1e-4] [--overwrite]

After writing, the file is loaded back (onnxruntime for ONNX) and run on random inputs at the
example size, at the training crop and at a third, odd size; the largest absolute logit difference
to the PyTorch model is printed per size and the command fails if one exceeds ``--atol``. Inputs
must be at least 17 pixels high and wide (two patches): a one-patch grid is a special case the
exporter does not keep.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vpnext.models import VPNeXt
from vpnext.ops.deform_conv import DeformConv3x3, deform_conv3x3_aten

__all__ = ["FORMATS", "export_graph", "inference_graph", "load_exported", "main", "max_abs_difference"]

#: Export format -> file suffix.
FORMATS = {"onnx": ".onnx", "torchscript": ".ts", "exported-program": ".pt2"}
INPUT_NAME, OUTPUT_NAME = "images", "logits"

Runner = Callable[[Tensor], Tensor]


class _TraceableDeformConv3x3(nn.Module):
    """A :class:`DeformConv3x3` (same parameters) computed with plain aten ops."""

    def __init__(self, conv: DeformConv3x3) -> None:
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        return deform_conv3x3_aten(x, offset, self.weight, self.bias)


def inference_graph(model: VPNeXt) -> nn.Module:
    """A copy of ``model`` to export: eval mode, no auxiliary branches, traceable deformable convs."""
    graph = copy.deepcopy(model).eval()
    graph.aux = None
    graph.aux_layers = []
    _swap_deform_convs(graph)
    graph.requires_grad_(False)
    return graph


def _swap_deform_convs(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, DeformConv3x3):
            setattr(module, name, _TraceableDeformConv3x3(child))
        else:
            _swap_deform_convs(child)


def export_graph(graph: nn.Module, fmt: str, path: Path, example: Tensor) -> Path:
    """Write ``graph`` (from :func:`inference_graph`) to ``path`` in format ``fmt``.

    Args:
        graph: The module to export.
        fmt: A key of :data:`FORMATS`.
        path: Output file.
        example: A normalised input batch (B, 3, H, W) to trace with; B > 1, or ``torch.export``
            fixes the batch size at 1.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # Tracers warn about every Python int they record; the result is checked numerically.
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(graph, (example,)), str(path))
            return path
        dynamic = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
        program = torch.export.export(graph, (example,), dynamic_shapes={INPUT_NAME: dynamic})
        if fmt == "exported-program":
            torch.export.save(program, str(path))
            return path
        if fmt == "onnx":
            onnx_program = torch.onnx.export(
                program,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamo=True,
                verbose=False,
            )
            onnx_program.save(str(path))
            return path
    raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")


def load_exported(path: Path, fmt: str) -> Runner:
    """A function running the exported file on a (B, 3, H, W) tensor (onnxruntime for ONNX)."""
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
        return lambda x: module(x)
    if fmt == "exported-program":
        program = torch.export.load(str(path)).module()
        return lambda x: program(x)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {INPUT_NAME: x.cpu().numpy()})[0])
    raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")


@torch.no_grad()
def max_abs_difference(
    model: nn.Module, runner: Runner, sizes: Sequence[tuple[int, int]], seed: int = 0
) -> dict:
    """Largest absolute logit difference between ``model`` and ``runner`` per input size (HxW keys)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for height, width in sizes:
        x = torch.randn(1, 3, height, width, generator=generator)
        out[f"{height}x{width}"] = float((model(x) - runner(x)).abs().max())
    return out


def _default_output(ckpt: Path, fmt: str) -> Path:
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir / "export" / f"{ckpt.stem}{FORMATS[fmt]}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpnext export",
        description="Export a checkpoint's inference graph (no auxiliary branches), checked against PyTorch.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `vpnext fit`")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="output format")
    parser.add_argument(
        "--output", help="output file (default: <run dir>/export/<checkpoint name>.onnx|.ts|.pt2)"
    )
    parser.add_argument("--height", type=int, help="example input height (default: the training crop + 5)")
    parser.add_argument("--width", type=int, help="example input width (default: the training crop + 7)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest logit difference accepted (1e-4)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``vpnext export``; returns the exit code."""
    args = _parser().parse_args(list(argv))
    from vpnext.inference import Segmenter  # loads the checkpoint weights_only

    ckpt = Path(args.ckpt_path)
    segmenter = Segmenter.from_checkpoint(ckpt)
    output = Path(args.output) if args.output else _default_output(ckpt, args.format)
    if output.exists() and not args.overwrite:
        print(f"vpnext export: error: {output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    crop = segmenter.model.backbone.vit.patch_embed.img_size
    if (args.height is None) != (args.width is None):
        print("vpnext export: error: give --height and --width together", file=sys.stderr)
        return 2
    # Default example: the training crop plus an odd margin, so that the padding and the position
    # embedding's resampling are on the path a TorchScript trace records.
    height, width = (args.height, args.width) if args.height else (int(crop[0]) + 5, int(crop[1]) + 7)
    if height < 17 or width < 17:
        print("vpnext export: error: --height and --width must be at least 17 (two patches)", file=sys.stderr)
        return 2
    graph = inference_graph(segmenter.model)
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    print(f"vpnext export: tracing {args.format} at 2x3x{height}x{width} ...", file=sys.stderr, flush=True)
    export_graph(graph, args.format, output, example)
    # The example, the training crop (no padding, no resampling) and a third, odd size: the graph
    # must follow every size, not only the example's.
    sizes = list(dict.fromkeys([(height, width), (int(crop[0]), int(crop[1])), (height + 13, width + 29)]))
    differences = max_abs_difference(segmenter.model, load_exported(output, args.format), sizes)
    metadata = _metadata(segmenter, args.format, ckpt, output, (height, width), differences, args.atol)
    sidecar = output.with_name(output.name + ".json")
    sidecar.write_text(json.dumps(metadata, indent=2) + "\n")
    worst = max(differences.values())
    report = ", ".join(f"{size}: {diff:.2e}" for size, diff in differences.items())
    print(f"vpnext export: wrote {output} (+ {sidecar.name})")
    print(f"vpnext export: max |logit difference| to PyTorch on CPU: {report} (atol {args.atol:g})")
    if not worst <= args.atol:
        print(
            f"vpnext export: error: the exported model differs from PyTorch by {worst:.2e}", file=sys.stderr
        )
        return 1
    return 0


def _metadata(
    segmenter: Any,
    fmt: str,
    ckpt: Path,
    output: Path,
    example: tuple[int, int],
    differences: dict[str, float],
    atol: float,
) -> dict[str, Any]:
    data = segmenter.data
    return {
        "format": fmt,
        "file": output.name,
        "checkpoint": str(ckpt),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, "height", "width"],
            "dtype": "float32",
            "normalisation": "RGB, x / 255, then (x - mean) / std per channel",
            "mean": list(data.mean),
            "std": list(data.std),
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", segmenter.num_classes, "height", "width"]},
        "dynamic_shapes": True,
        "min_size": 17,
        "example_size": list(example),
        "test_scale": None if data.test_scale is None else list(data.test_scale),
        "evaluation_protocol": segmenter.protocol,
        "class_names": list(segmenter.class_names),
        "palette": [list(c) for c in segmenter.palette],
        "max_abs_difference": differences,
        "atol": atol,
    }
