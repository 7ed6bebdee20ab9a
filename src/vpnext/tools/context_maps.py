"""``vpnext context-maps``: the paper's Fig. 4 for chosen pixels of an image.

For each chosen pixel it draws, left to right:

1. the image with the pixel marked;
2. the final layer's affinity row ``Lambda_z[p, :]`` of the VCR model: the softmax of the pixel's
   query against every key of the context head, averaged over the heads (the weights with which
   the global context of Eq. 3 gathers the 1/16 grid for that pixel);
3. the feature similarity of an intermediate layer ``x_i`` of the VCR model: the cosine similarity
   between the pixel's token and every token of block ``i``'s output;
4. the same for the model trained without replay (deep supervision).

With replay, the intermediate layer is trained through the final layer's affinity, so its
similarity map should resemble the affinity row more than the deep-supervision model's does.

Usage::

    vpnext context-maps --vcr VCR.ckpt --baseline DS.ckpt --image IMG --points Y,X [Y,X ...]
                        [--layer I] [--output fig4.png]

``--layer`` is a 0-based ViT block (default: the VCR model's first auxiliary layer). The image
goes through each checkpoint's own preprocessing (:class:`~vpnext.inference.Segmenter`, its test
resize included: the points follow it) and is run whole, without the sliding window.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vpnext.models import VPNeXt
from vpnext.models.context_head import ContextHead
from vpnext.models.layers import pad_to_multiple

__all__ = ["context_maps", "draw_context_maps", "input_points", "main", "token_of"]


def token_of(point: tuple[int, int], patch: int, grid_width: int) -> int:
    """Index of the 1/patch token that holds pixel ``(y, x)`` of the (padded) image."""
    return (point[0] // patch) * grid_width + point[1] // patch


@torch.inference_mode()
def context_maps(
    model: VPNeXt, image: Tensor, points: Sequence[tuple[int, int]], layer: int
) -> dict[str, np.ndarray]:
    """Final-layer affinity rows and layer-``layer`` feature similarities for ``points``.

    Args:
        model: A VPNeXt with the context head (it computes the affinity).
        image: A normalised (1, 3, H, W) image.
        points: Pixels ``(y, x)`` of the image.
        layer: 0-based ViT block whose output ``x_i`` is compared.

    Returns:
        ``affinity`` and ``similarity``: (len(points), h, w) arrays on the 1/patch grid; each
        affinity row sums to 1, each similarity map is 1 at its own token.
    """
    if not isinstance(model.head, ContextHead):
        raise ValueError("the model has no context head (head='mask_transformer'), so no affinity")
    model.eval()
    patch = model.backbone.patch_size
    x = pad_to_multiple(image, model.pad_multiple)
    if model.pyramid_embed is not None:
        patches, _ = model.pyramid_embed(x, model.backbone.patch_proj)
    else:
        patches = model.backbone.patch_proj(x)
    (features,), x_z = model.backbone(patches, [layer])
    _, context = model.head(x_z)
    grid_h, grid_w = features.shape[-2:]
    tokens = [token_of(p, patch, grid_w) for p in points]
    scale = 1.0 / math.sqrt(context.query.shape[-1])
    queries = context.query[0][:, tokens]  # (heads, P, d)
    affinity = torch.softmax(queries @ context.key[0].transpose(-1, -2) * scale, dim=-1).mean(0)
    flat = features[0].flatten(1)  # (C, h*w)
    similarity = F.cosine_similarity(flat[:, tokens].T[:, :, None], flat[None], dim=1)
    shape = (len(points), grid_h, grid_w)
    return {
        "affinity": affinity.reshape(shape).float().cpu().numpy(),
        "similarity": similarity.reshape(shape).float().cpu().numpy(),
    }


def _parse_point(text: str) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"point {text!r}: expected Y,X (pixel row, column)") from None
    return y, x


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpnext context-maps",
        description="Fig. 4: final-layer affinity and intermediate-layer feature similarity, with and "
        "without Visual Context Replay, for chosen pixels.",
    )
    parser.add_argument("--vcr", required=True, help="checkpoint of a model trained with aux=vcr")
    parser.add_argument(
        "--baseline", required=True, help="checkpoint trained without replay (deep_supervision)"
    )
    parser.add_argument("--image", required=True, help="the image")
    parser.add_argument("--points", required=True, nargs="+", type=_parse_point, help="pixels as Y,X")
    parser.add_argument(
        "--layer", type=int, help="0-based ViT block (default: the VCR model's first aux layer)"
    )
    parser.add_argument(
        "--output", default="context_maps.png", help="figure file (default: context_maps.png)"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``vpnext context-maps``; returns the exit code."""
    args = _parser().parse_args(list(argv))
    from vpnext.inference import Segmenter, to_rgb

    vcr = Segmenter.from_checkpoint(args.vcr, eval_window="whole")
    baseline = Segmenter.from_checkpoint(args.baseline, eval_window="whole")
    rgb = to_rgb(args.image)
    height, width = rgb.shape[:2]
    outside = [p for p in args.points if not (0 <= p[0] < height and 0 <= p[1] < width)]
    if outside:
        print(
            f"vpnext context-maps: error: points {outside} outside the {height}x{width} image",
            file=sys.stderr,
        )
        return 2
    inputs = {"vcr": vcr.preprocess(rgb)[0], "baseline": baseline.preprocess(rgb)[0]}
    input_size = tuple(inputs["vcr"].shape[-2:])
    if tuple(inputs["baseline"].shape[-2:]) != input_size:
        other = tuple(inputs["baseline"].shape[-2:])
        print(
            f"vpnext context-maps: error: the checkpoints resize differently ({input_size} vs {other})",
            file=sys.stderr,
        )
        return 2
    layer = (
        args.layer if args.layer is not None else (vcr.model.aux_layers or [vcr.model.backbone.depth // 2])[0]
    )
    # With a test resize (CamVid's 480x360 -> 240x180) the models see a smaller image: the points
    # are taken to its pixels, and the maps are drawn back over the original.
    points = input_points(args.points, (height, width), input_size)
    maps = {
        "vcr": context_maps(vcr.model, inputs["vcr"], points, layer),
        "baseline": context_maps(baseline.model, inputs["baseline"], points, layer),
    }
    cell = (
        vcr.model.backbone.patch_size * height / input_size[0],
        vcr.model.backbone.patch_size * width / input_size[1],
    )
    figure = draw_context_maps(rgb, args.points, maps, layer, cell)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    print(f"vpnext context-maps: wrote {output} ({len(args.points)} point(s), layer {layer})")
    return 0


def input_points(
    points: Sequence[tuple[int, int]], image_size: tuple[int, int], input_size: tuple[int, int]
) -> list[tuple[int, int]]:
    """Pixels ``(y, x)`` of an ``image_size`` image at the same place in its ``input_size`` resize."""
    (height, width), (in_h, in_w) = image_size, input_size
    return [(min(int(y * in_h / height), in_h - 1), min(int(x * in_w / width), in_w - 1)) for y, x in points]


def draw_context_maps(
    rgb: np.ndarray,
    points: Sequence[tuple[int, int]],
    maps: dict[str, Any],
    layer: int,
    cell: tuple[float, float],
) -> Any:
    """The figure: one row per point (image, VCR affinity, VCR similarity, baseline similarity).

    ``cell`` is one grid cell's ``(h, w)`` in the image's pixels: the patch size, scaled by the
    test resize the models saw.
    """
    cell_h, cell_w = cell
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = rgb.shape[:2]
    titles = [
        "image",
        "final-layer affinity (VCR)",
        f"layer {layer} similarity, VCR",
        f"layer {layer} similarity, deep supervision",
    ]
    fig, axes = plt.subplots(len(points), 4, figsize=(10, 2.6 * len(points)), squeeze=False)
    for row, (y, x) in enumerate(points):
        panels = [
            maps["vcr"]["affinity"][row],
            maps["vcr"]["similarity"][row],
            maps["baseline"]["similarity"][row],
        ]
        axes[row, 0].imshow(rgb)
        for col, panel in enumerate(panels, start=1):
            # The grid covers the padded image; crop it back to the image's extent.
            grid_h, grid_w = panel.shape
            axes[row, col].imshow(rgb, alpha=0.35)
            axes[row, col].imshow(
                panel,
                cmap="jet",
                alpha=0.65,
                extent=(0, grid_w * cell_w, grid_h * cell_h, 0),
                interpolation="nearest",
            )
            axes[row, col].set_xlim(0, width)
            axes[row, col].set_ylim(height, 0)
        for col in range(4):
            axes[row, col].plot([x], [y], marker="x", color="white", markersize=9, mew=2.5)
            axes[row, col].plot([x], [y], marker="x", color="black", markersize=7, mew=1.2)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(titles[col], fontsize=9)
    fig.tight_layout()
    return fig
