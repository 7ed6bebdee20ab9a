"""One-off label conversions that turn a dataset as distributed into the layout we read.

``python -m vpnext.data.prepare NAME --root PATH`` (also wired as ``vpnext data prepare``):

- ``coco_stuff``: raw maps ``annotations/{train,val}2017/<id>.png`` (values 0..181 = COCO id - 1,
  255 unlabelled) -> ``<id>_labelTrainIds.png`` beside them, ids 0..170 with the 11 unused ids
  -> 255 (mmsegmentation's ``coco_stuff.py`` produces the same files).
- ``cityscapes``: ``gtFine/*/*/*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png`` with the
  official id -> trainId table (the files cityscapesscripts' ``createTrainIdLabelImgs`` writes).
- ``synthetic``: generates the synthetic dataset under ``--root``.
- ``ade20k``, ``camvid``, ``folder``: nothing to convert (returns 0).
- ``pascal_context`` and ``voc_aug`` need the Detail API / SBD ``.mat`` files; use mmseg's
  converters (docs/datasets.md).

Conversions are idempotent: an output newer than its source is skipped, outputs are written to a
temporary name and renamed (an interrupted run leaves no half-written label), and the originals
are only read.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from vpnext.data.classes import cityscapes_id_to_train_lut, coco_stuff_raw_to_train_lut
from vpnext.data.errors import DatasetError

_COCO_SUFFIX = "_labelTrainIds.png"
_CITY_SRC = "_gtFine_labelIds.png"
_CITY_DST = "_gtFine_labelTrainIds.png"


def _up_to_date(src: Path, dst: Path) -> bool:
    return dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime


def convert_label_file(src: Path, dst: Path, lut: np.ndarray) -> bool:
    """Map one label PNG through ``lut`` and write it, unless ``dst`` is already up to date.

    Args:
        src: Single-channel source PNG (never modified).
        dst: Output PNG (mode L).
        lut: int16 table of 256 entries; -1 marks values the source format may not contain.

    Returns:
        True if a file was written.

    Raises:
        DatasetError: The source is not single-channel or holds values the table rejects.
    """
    if _up_to_date(src, dst):
        return False
    with Image.open(src) as img:
        if img.mode not in ("L", "P"):
            raise DatasetError(f"{src}: expected a single-channel id map, got mode {img.mode}")
        raw = np.asarray(img)
    out = lut[raw]
    if (out < 0).any():
        bad = np.unique(raw[out < 0]).tolist()[:10]
        raise DatasetError(f"{src}: values {bad} are not valid ids of this dataset")
    tmp = dst.with_name(f".{dst.name}.tmp")
    Image.fromarray(out.astype(np.uint8), mode="L").save(tmp, format="PNG")
    os.replace(tmp, dst)
    return True


def _convert_all(pairs: Sequence[tuple[Path, Path]], lut: np.ndarray, workers: int) -> int:
    if workers <= 1:
        return sum(convert_label_file(s, d, lut) for s, d in pairs)
    with ProcessPoolExecutor(workers) as pool:
        done = pool.map(convert_label_file, *zip(*pairs, strict=True), [lut] * len(pairs), chunksize=64)
        return sum(done)


def coco_stuff_pairs(root: Path) -> list[tuple[Path, Path]]:
    """Raw -> train-id file pairs of a COCO-Stuff 164k root (``annotations/*2017/*.png``)."""
    ann = root / "annotations"
    if not ann.is_dir():
        raise DatasetError(f"{ann}: missing; expected COCO-Stuff's annotations/{{train,val}}2017")
    srcs = [p for p in sorted(ann.glob("*2017/*.png")) if not p.name.endswith(_COCO_SUFFIX)]
    return [(p, p.with_name(p.stem + _COCO_SUFFIX)) for p in srcs if not p.name.startswith(".")]


def cityscapes_pairs(root: Path) -> list[tuple[Path, Path]]:
    """labelIds -> labelTrainIds file pairs of a Cityscapes root (``gtFine/<split>/<city>/``)."""
    gt = root / "gtFine"
    if not gt.is_dir():
        raise DatasetError(f"{gt}: missing; expected Cityscapes' gtFine/<split>/<city>/")
    srcs = sorted(gt.glob(f"*/*/*{_CITY_SRC}"))
    return [(p, p.with_name(p.name[: -len(_CITY_SRC)] + _CITY_DST)) for p in srcs]


def _prepare_synthetic(root: Path) -> int:
    from vpnext.data.synthetic import ensure_synthetic

    before = set(root.iterdir()) if root.is_dir() else set()
    folder = ensure_synthetic(root)
    return 0 if folder in before else sum(1 for p in folder.rglob("*") if p.is_file())


_CONVERTERS: dict[str, tuple[Callable[[Path], list[tuple[Path, Path]]], Callable[[], np.ndarray]]] = {
    "coco_stuff": (coco_stuff_pairs, coco_stuff_raw_to_train_lut),
    "cityscapes": (cityscapes_pairs, cityscapes_id_to_train_lut),
}
_NOTHING_TO_DO = ("ade20k", "camvid", "folder")
_EXTERNAL = ("pascal_context", "voc_aug")


def prepare(name: str, root: Path, *, workers: int = 1) -> int:
    """Convert a dataset's labels into the format the loaders read.

    Args:
        name: Dataset name (see module docstring for what each does).
        root: Dataset root.
        workers: Processes for the conversion (COCO-Stuff has 164k maps).

    Returns:
        Number of files written (0 when everything was already up to date).

    Raises:
        DatasetError: Missing folders or invalid source labels.
        ValueError: A dataset this command cannot prepare.
    """
    root = Path(root)
    if name == "synthetic":
        return _prepare_synthetic(root)
    if name in _NOTHING_TO_DO:
        return 0
    if name in _EXTERNAL:
        raise ValueError(
            f"{name}: labels are built from the original annotation files by mmsegmentation's "
            "converter; see docs/datasets.md"
        )
    if name not in _CONVERTERS:
        raise ValueError(f"unknown dataset {name!r}")
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist")
    list_pairs, make_lut = _CONVERTERS[name]
    return _convert_all(list_pairs(root), make_lut(), workers)


def main(argv: Iterable[str] | None = None) -> int:
    """Command-line entry: ``python -m vpnext.data.prepare NAME --root PATH [--workers N]``."""
    parser = argparse.ArgumentParser(prog="vpnext data prepare", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted([*_CONVERTERS, *_NOTHING_TO_DO, *_EXTERNAL, "synthetic"]))
    parser.add_argument("--root", type=Path, required=True, help="dataset root folder")
    parser.add_argument("--workers", type=int, default=1, help="conversion processes")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        written = prepare(args.name, args.root, workers=args.workers)
    except (DatasetError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"{args.name}: wrote {written} file(s) under {args.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
