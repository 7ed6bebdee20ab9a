"""``vpnext flops``: parameters and inference MACs of a configured VPNeXt, per part (Table III).

Counts one eval-mode forward pass with :func:`vpnext.models.macs.count_macs` (fused attention and
deformable convolutions included, see there) and attributes every op to one of the model's parts:

- ``backbone``: ViT patch embedding (stride 16), blocks, final norm;
- ``pyramid_embed``: ViTUp's hidden stride-4 embedding (``upsampler='hiclr'`` only);
- ``head``: the context head (or Segmenter's mask transformer) and its classifier;
- ``upsampler``: bilinear (0), mock pyramid or HiCLR;
- ``aux``: the training-only auxiliary branches, which must be 0 in eval (Table III: VCR, deep
  supervision, naive align and none cost the same at inference);
- ``other``: ops VPNeXt runs outside these modules (e.g. the mask head's patch-class product).

Usage::

    vpnext flops --config experiments/vitup.yaml [--image-size H W] [--json FILE] [--model.x=y ...]

The default image size is the config's training crop (``model.img_size`` or ``data.crop_size``).
``--train-forward`` counts a training-mode forward instead (auxiliary branches included), which
is what a counter that forgets ``model.eval()`` reports.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch

from vpnext import paper
from vpnext.models.macs import OTHER, measure_macs
from vpnext.tools.model_config import ModelConfig, config_parser, load_model_config, write_json

__all__ = ["flops_result", "main", "table3"]


def flops_result(
    config: ModelConfig, image_size: tuple[int, int], batch_size: int = 1, train_forward: bool = False
) -> dict[str, Any]:
    """Build the configured model and return the JSON document of ``vpnext flops``.

    The model is built and run on PyTorch's ``meta`` device: every op is dispatched with its real
    shapes (so the count is the same as on a CPU, tested) but nothing is computed or allocated, so
    a ViT-L VPNeXt at the paper's width is counted in about a second. Weights are not loaded.
    """
    # timm's weight init would dispatch every trunc_normal_ on the meta device for nothing.
    arch = dict(config.model_args.get("backbone_kwargs") or {})
    if timm.models.model_entrypoint(config.model_args["backbone"]).__module__.endswith(".vision_transformer"):
        arch["weight_init"] = "skip"  # a VisionTransformer argument; timm's Eva has none
    with torch.device("meta"):
        model = config.build(pretrained=False, backbone_kwargs=arch)
    result = measure_macs(model, image_size, batch_size, train_forward)
    return {
        **result,
        "widths": dataclasses.asdict(model.widths),
        "mode": "train" if train_forward else "eval",
        "image_size": list(image_size),
        "batch_size": batch_size,
        "backbone": config.model_args["backbone"],
        "switches": config.to_dict(),
        "torch": torch.__version__,
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of MACs and parameters per part."""
    switches = result["switches"]
    height, width = result["image_size"]
    upsampler = switches["upsampler"]
    if upsampler == "hiclr":
        upsampler += f"(depth {switches['hiclr_depth']})"
    lines = [
        f"{result['backbone']}, {height}x{width}, batch {result['batch_size']}, {result['mode']} forward, "
        f"{switches['num_classes']} classes; aux={switches['aux']} head={switches['head']} "
        f"upsampler={upsampler} decoder={switches['decoder']} ({_widths_text(result['widths'])})",
        f"{'part':<14}{'GMACs':>12}{'params (M)':>13}",
    ]
    for name, group in result["groups"].items():
        if name == OTHER and not group["macs"] and not group["params"]:
            continue
        note = "  (training only)" if name == "aux" and group["params"] and result["mode"] == "eval" else ""
        lines.append(f"{name:<14}{group['gmacs']:>12.3f}{group['params_m']:>13.3f}{note}")
    lines.append(f"{'total':<14}{result['gmacs']:>12.3f}{result['params_m']:>13.3f}")
    lines.append(f"{'decoder':<14}{result['decoder_gmacs']:>12.3f}{'':>13}  (total - backbone)")
    return "\n".join(lines)


def _widths_text(widths: dict[str, int]) -> str:
    return " ".join(f"{name}={value}" for name, value in widths.items())


#: Table III of the paper (ViT-L/16, 480x480, Pascal Context 59), GMACs by row name; None: no
#: comparable figure (the paper's "> 2000" is Mask2Former-based, not this model).
PAPER_TABLE3: dict[str, float | None] = {row.name: row.gmacs for row in paper.TABLE3}
#: The title and switches of each Table III row (on top of the configs given).
TABLE3_ROWS: dict[str, tuple[str, list[str]]] = {
    row.name: (row.title, list(row.switches)) for row in paper.TABLE3
}
#: The decoder configurations Table III is counted for.
TABLE3_DECODERS = ("paper", "efficient")


def table3(
    configs: Sequence[Path], overrides: Sequence[str], image_size: tuple[int, int] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """``vpnext flops`` of every Table III row for each decoder: ``{decoder: {row: result}}``."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for decoder in TABLE3_DECODERS:
        for row, (_, switches) in TABLE3_ROWS.items():
            config = load_model_config(list(configs), [*overrides, f"--model.decoder={decoder}", *switches])
            size = image_size or config.image_size
            results.setdefault(decoder, {})[row] = flops_result(config, size)
    return results


def format_table3(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown: GMACs of each row for each decoder, beside the paper's figure and the difference."""
    header = ["Method"]
    for decoder in results:
        header += [f"{decoder}, GMACs", "vs paper"]
    header.append("paper")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, (title, _) in TABLE3_ROWS.items():
        paper = PAPER_TABLE3[row]
        cells = [title]
        for rows in results.values():
            gmacs = rows[row]["gmacs"]
            cells += [f"{gmacs:.2f}", "" if paper is None else f"{100 * (gmacs / paper - 1):+.1f}%"]
        cells.append("> 2000 (Mask2Former-based)" if paper is None else f"{paper:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    any_rows = next(iter(results.values()))
    first = next(iter(any_rows.values()))
    height, width = first["image_size"]
    lines.append("")
    lines.append(
        f"{first['backbone']}, {height}x{width}, {first['switches']['num_classes']} classes, inference MACs; "
        f"backbone alone {first['groups']['backbone']['gmacs']:.2f}."
    )
    for decoder, rows in results.items():
        ratio = rows["vpnext"]["gmacs"] / rows["deep_supervision"]["gmacs"]
        lines.append(
            f"{decoder}: {_widths_text(rows['vpnext']['widths'])}; VPNeXt / deep supervision {ratio:.3f}x"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vpnext flops``.

    Args:
        argv: Arguments after ``flops``.

    Returns:
        Exit code (2 for a bad option or config).
    """
    parser = config_parser("vpnext flops", "Parameters and inference MACs per part of a configured VPNeXt.")
    parser.add_argument(
        "--train-forward",
        action="store_true",
        help="count a training-mode forward (auxiliary branches run); not an inference cost",
    )
    parser.add_argument(
        "--table3",
        action="store_true",
        help="count every Table III row for the paper and the efficient decoder, beside the paper",
    )
    parser.add_argument("--json-dir", type=Path, help="with --table3: one JSON file per row and decoder")
    args, overrides = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if args.table3:
        try:
            results = table3(args.config, overrides, tuple(args.image_size) if args.image_size else None)
        except (ValueError, FileNotFoundError) as err:
            parser.error(str(err))
        print(format_table3(results))
        if args.json_dir:
            for decoder, rows in results.items():
                for row, result in rows.items():
                    write_json(args.json_dir / f"{decoder}_{row}.json", result)
        return 0
    try:
        config = load_model_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    image_size = tuple(args.image_size) if args.image_size else config.image_size
    result = flops_result(config, image_size, args.batch_size, args.train_forward)
    print(format_table(result))
    for note in config.notes:
        print(f"note: {note}")
    if args.json:
        write_json(args.json, result)
    return 0
