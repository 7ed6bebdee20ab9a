"""Per-class loss weights from a data set's training labels, for ``--model.class_weight``.

Counts every class's pixels over the split's labels (as stored, converted to train ids; ignored
pixels left out) and prints the weights as a YAML line to paste into a config. Two schemes:

- ``enet`` (default): ``1 / ln(c + p_k)`` with ``p_k`` the class's share of all valid pixels and
  ``c = 1.02`` (ENet, Paszke et al. 2016): bounded between 1 and ~50, rare classes up-weighted
  without the extreme values of plain inverse frequency;
- ``median``: median-frequency balancing (Eigen & Fergus 2015; SegNet's CamVid weights):
  ``median(f) / f_k`` with ``f_k`` the class's pixels over the pixels of the images it occurs in.

The weights are rescaled so that their pixel-weighted mean is 1 (the weighted cross-entropy is a
weighted *mean*, so the scale only matters for readability). A class absent from the split gets
weight 0 and a warning.

Usage::

    python scripts/class_weights.py --dataset camvid --root ../shared/data/camvid [--scheme enet] \
        [--exclude-groups 0006R0]
"""

from __future__ import annotations

import argparse
import sys

from vpnext.data.class_stats import class_pixel_counts, class_weights
from vpnext.data.datasets import DATASET_CLASSES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASET_CLASSES))
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--scheme", default="enet", choices=("enet", "median"))
    parser.add_argument(
        "--exclude-groups",
        default="",
        help="comma-separated groups (videos) to leave out, as --data.val_groups does: weights "
        "from the frames a held-out-group run trains on",
    )
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.exclude_groups.split(",") if g.strip()]
    pixels, image_pixels, names = class_pixel_counts(args.dataset, args.root, args.split, groups)
    weights = class_weights(pixels, image_pixels, args.scheme)
    share = pixels / pixels.sum()
    for name, p, w in zip(names, share, weights, strict=True):
        print(f"# {name:>14s}  {100 * p:6.2f} % of pixels  weight {w:.3f}")
        if p == 0:
            print(f"warning: class {name!r} has no pixels in {args.split}", file=sys.stderr)
    print("class_weight: [" + ", ".join(f"{w:.3f}" for w in weights) + "]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
