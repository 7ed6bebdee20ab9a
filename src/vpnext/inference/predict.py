"""``vpnext predict --ckpt_path CKPT INPUT...``: label PNGs and overlays for files, folders and lists.

Each input is segmented by :class:`~vpnext.inference.Segmenter` (the checkpoint's preprocessing,
sliding window and multi-scale protocol, exactly as in evaluation) and written as

- ``OUT/labels/<rel>.png``: a palette PNG whose pixel values are the train ids;
- ``OUT/overlays/<rel>.png``: the label colours blended over the image (``--alpha``);
- ``OUT/probs/<rel>.npy`` with ``--probs``: per-class probabilities (K, H, W), float16;

where ``<rel>`` is the input's path below the folder given (subfolders mirrored) or its file
name, *with* its extension (``a.jpg`` -> ``a.jpg.png``), so ``a.jpg`` and ``a.png`` never
collide; two inputs that still map to one name (same file name from two listed folders) get
``-1``, ``-2`` appended. Inputs: image files, folders (searched recursively for
``.png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp``) and ``@list.txt`` files naming one input per line.

Outputs that exist are kept unless ``--overwrite``; an input that cannot be read is reported on
stderr and skipped, and the run ends with a count of written, kept and skipped inputs (exit 1 if
any was skipped; ``--strict`` stops at the first). ``vpnext predict --config ...`` is Lightning's
predict loop over a data split instead (docs/training.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["PREDICT_SUFFIXES", "PredictItem", "collect_inputs", "main"]

#: File suffixes a folder is searched for (case-insensitive).
PREDICT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class PredictItem:
    """One input file and the relative output name its results get (without the added suffix)."""

    source: Path
    name: Path


def collect_inputs(inputs: Sequence[str]) -> tuple[list[PredictItem], list[str]]:
    """Expand files, folders (recursively) and ``@list`` files into items with unique output names.

    Returns:
        The items in a stable order, and one message per input that does not exist.
    """
    items: list[PredictItem] = []
    missing: list[str] = []
    for arg in _expand_lists(inputs, missing):
        path = Path(arg)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PREDICT_SUFFIXES)
            items += [PredictItem(f, f.relative_to(path)) for f in files]
        elif path.is_file():
            items.append(PredictItem(path, Path(path.name)))
        else:
            missing.append(f"{arg}: no such file or folder")
    taken: set[str] = set()
    unique = []
    for item in items:
        name, attempt = item.name, 0
        while str(name).lower() in taken:  # case-insensitive: some filesystems are
            attempt += 1
            name = item.name.with_name(f"{item.name.name}-{attempt}")
        taken.add(str(name).lower())
        unique.append(PredictItem(item.source, name))
    return unique, missing


def _expand_lists(inputs: Sequence[str], missing: list[str]) -> list[str]:
    out = []
    for arg in inputs:
        if arg.startswith("@"):
            listing = Path(arg[1:])
            if not listing.is_file():
                missing.append(f"{arg}: list file not found")
                continue
            out += [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        else:
            out.append(arg)
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpnext predict",
        description=(
            "Label images with a trained checkpoint: a palette label PNG (values = train ids) and a "
            "colour overlay per input. (With --config: Lightning's predict over a data split.)"
        ),
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders (recursive) or @list.txt files")
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `vpnext fit`")
    parser.add_argument("--output", default="predictions", help="output folder (default: ./predictions)")
    parser.add_argument("--probs", action="store_true", help="also write per-class probabilities (.npy)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the label colours")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    parser.add_argument("--strict", action="store_true", help="stop at the first input that cannot be read")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--eval_mode", choices=["ss", "ms_flip"], help="override the checkpoint's")
    parser.add_argument("--eval_window", choices=["data", "whole", "slide"], help="override the checkpoint's")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``vpnext predict`` (without ``--config``); returns the exit code."""
    args = _parser().parse_args(list(argv))
    from tqdm import tqdm

    from vpnext.data.errors import DatasetError
    from vpnext.inference.images import to_rgb
    from vpnext.inference.pictures import overlay, save_palette_png
    from vpnext.inference.segmenter import Segmenter

    items, problems = collect_inputs(args.inputs)
    if problems and args.strict:
        print(f"vpnext predict: error: {problems[0]}", file=sys.stderr)
        return 1
    overrides = {k: getattr(args, k) for k in ("eval_mode", "eval_window") if getattr(args, k)}
    segmenter = Segmenter.from_checkpoint(args.ckpt_path, device=args.device, **overrides)
    out = Path(args.output)
    print(
        f"vpnext predict: {len(items)} image(s) -> {out.resolve()} ({segmenter!r})",
        file=sys.stderr,
        flush=True,
    )
    written = kept = 0
    for item in tqdm(
        items, desc="predict", unit="img", disable=args.no_progress or not items, file=sys.stderr
    ):
        targets = {
            "labels": out / "labels" / _with_suffix(item.name, ".png"),
            "overlays": out / "overlays" / _with_suffix(item.name, ".png"),
        }
        if args.probs:
            targets["probs"] = out / "probs" / _with_suffix(item.name, ".npy")
        if not args.overwrite and all(p.exists() for p in targets.values()):
            kept += 1
            continue
        try:
            rgb = to_rgb(item.source)
        except DatasetError as err:
            problems.append(str(err))
            if args.strict:
                print(f"vpnext predict: error: {err}", file=sys.stderr)
                return 1
            tqdm.write(f"vpnext predict: skipped {err}", file=sys.stderr)
            continue
        scores = segmenter.scores(rgb)
        labels = scores.argmax(0).cpu().numpy()  # the evaluation's argmax, not the probabilities'
        for path in targets.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        save_palette_png(labels, segmenter.palette, targets["labels"])
        Image.fromarray(overlay(rgb, labels, segmenter.palette, args.alpha)).save(targets["overlays"])
        if args.probs:
            np.save(targets["probs"], segmenter.probabilities(scores).astype(np.float16))
        written += 1
    skipped = len(problems)
    print(
        f"vpnext predict: {written} written, {kept} kept (exist; --overwrite replaces), "
        f"{skipped} skipped (unreadable or missing) -> {out.resolve()}",
        file=sys.stderr,
    )
    for problem in problems:
        print(f"vpnext predict:   skipped: {problem}", file=sys.stderr)
    return 1 if skipped else 0


def _with_suffix(name: Path, suffix: str) -> Path:
    return name.with_name(name.name + suffix)
