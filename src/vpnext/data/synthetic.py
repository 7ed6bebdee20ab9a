"""A small procedurally generated segmentation data set that can only be solved with spatial context.

Every scene is a textured background with a few objects on it. The classes differ by *shape* or
*arrangement* only: every region (background or object) is painted by the same random "paint"
generator (two colours drawn uniformly from the RGB cube, mixed flat, as a linear gradient or through
smooth noise), so the colour of one pixel says nothing about its class. Telling a disc from a
square, a ring from a disc, or a shape that sits inside another shape (``nested``) from a free
standing one needs the pixel's neighbourhood. ``scripts/colour_baseline.py`` measures how far a
per-pixel colour classifier gets (see ``docs/synthetic.md``).

The data set is written once to a cache folder in the layout the folder reader expects::

    <root>/images/<split>/<id>.png        RGB
    <root>/annotations/<split>/<id>.png   L mode, 0..K-1, 255 = ignore
    <root>/<split>.txt                    one id per line (train, val)
    <root>/meta.json                      classes, palette, seed, version, generation parameters

Each scene is drawn from its own random stream seeded by ``(seed, split, index)``, so image ``i`` of a
split does not depend on how many images the split has.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_PALETTE",
    "SYNTHETIC_VERSION",
    "default_cache_dir",
    "ensure_synthetic",
    "generate_scene",
]

#: Bump whenever the generator's output changes, so stale caches are never reused.
SYNTHETIC_VERSION = 1

SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "disc", "square", "triangle", "ring", "nested")
#: Display colours for label maps (not related to the image colours, which are random).
SYNTHETIC_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (145, 30, 180),
)

IGNORE_INDEX = 255
_SPLITS = ("train", "val")
_BACKGROUND, _DISC, _SQUARE, _TRIANGLE, _RING, _NESTED = range(6)
_SOLID_SHAPES = (_DISC, _SQUARE, _TRIANGLE)
_STANDALONE = (_DISC, _SQUARE, _TRIANGLE, _RING)
# Mean-colour distance (RGB, 0..255) an object needs from what it is drawn on; without it some
# objects would be invisible and their labels pure noise.
_MIN_CONTRAST = 60.0
# Sensor-like noise on the whole image so that flat paints are not single exact colours.
_PIXEL_NOISE_STD = 4.0


def default_cache_dir() -> Path:
    """Folder the synthetic data set is cached under: ``$VPNEXT_CACHE`` or ``~/.cache/vpnext``."""
    env = os.environ.get("VPNEXT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vpnext"


def _interp_matrix(n_low: int, n_high: int) -> np.ndarray:
    """(n_high, n_low) bilinear upsampling weights (pixel-centre aligned, edges clamped)."""
    pos = np.clip((np.arange(n_high) + 0.5) * n_low / n_high - 0.5, 0, n_low - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_low - 1)
    frac = pos - lo
    mat = np.zeros((n_high, n_low))
    mat[np.arange(n_high), lo] += 1.0 - frac
    mat[np.arange(n_high), hi] += frac
    return mat


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random field in [0, 1] of shape (size, size): a coarse random grid upsampled."""
    cells = int(rng.integers(3, 9))
    grid = rng.random((cells, cells))
    up = _interp_matrix(cells, size)
    field = up @ grid @ up.T
    lo, hi = field.min(), field.max()
    return (field - lo) / max(hi - lo, 1e-6)


def _paint(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    """A full-canvas (size, size, 3) float texture; the same distribution for every class.

    Two colours uniform in the RGB cube, mixed by a field ``t`` that is zero (flat), a linear ramp
    in a random direction (gradient) or smooth noise.
    """
    c1, c2 = rng.uniform(0, 255, size=(2, 3))
    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(c1, (size, size, 3)).astype(np.float64)
    if kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        t = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-6)
    else:
        t = _smooth_noise(rng, size)
    return c1 + t[..., None] * (c2 - c1)


def _shape_mask(
    kind: int, cy: float, cx: float, radius: float, angle: float, yy: np.ndarray, xx: np.ndarray, hole: float
) -> np.ndarray:
    """Boolean mask of a shape with circumradius ``radius`` centred at (cy, cx), rotated by ``angle``."""
    dy, dx = yy - cy, xx - cx
    if kind == _DISC:
        return dy**2 + dx**2 <= radius**2
    if kind == _RING:
        d2 = dy**2 + dx**2
        return (d2 <= radius**2) & (d2 > (hole * radius) ** 2)
    if kind == _SQUARE:
        u = np.cos(angle) * dx + np.sin(angle) * dy
        v = -np.sin(angle) * dx + np.cos(angle) * dy
        half = radius / np.sqrt(2.0)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if kind == _TRIANGLE:
        # Equilateral: inside iff the projection on every vertex direction is >= -inradius (R/2).
        inside = np.ones_like(dx, dtype=bool)
        for k in range(3):
            phi = angle + 2.0 * np.pi * k / 3.0
            inside &= np.cos(phi) * dx + np.sin(phi) * dy >= -radius / 2.0
        return inside
    raise ValueError(f"unknown shape kind {kind}")


def _inradius(kind: int, radius: float) -> float:
    """Radius of the largest disc centred in the shape (to fit a nested shape inside)."""
    return {_DISC: radius, _SQUARE: radius / np.sqrt(2.0), _TRIANGLE: radius / 2.0}[kind]


def _contrasting_paint(
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    size: int,
    mask: np.ndarray,
    under: np.ndarray,
) -> np.ndarray:
    """A paint whose mean over ``mask`` differs visibly from the image ``under`` it (a few tries)."""
    under_mean = under[mask].mean(axis=0)
    paint = _paint(rng, yy, xx, size)
    for _ in range(10):
        if np.linalg.norm(paint[mask].mean(axis=0) - under_mean) >= _MIN_CONTRAST:
            break
        paint = _paint(rng, yy, xx, size)
    return paint


def _ignore_band(label: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` steps (4-neighbourhood) of a label change, on both sides."""
    edge = np.zeros(label.shape, dtype=bool)
    diff_v = label[1:, :] != label[:-1, :]
    diff_h = label[:, 1:] != label[:, :-1]
    edge[1:, :] |= diff_v
    edge[:-1, :] |= diff_v
    edge[:, 1:] |= diff_h
    edge[:, :-1] |= diff_h
    band = edge.copy()
    for _ in range(width - 1):
        grown = band.copy()
        grown[1:, :] |= band[:-1, :]
        grown[:-1, :] |= band[1:, :]
        grown[:, 1:] |= band[:, :-1]
        grown[:, :-1] |= band[:, 1:]
        band = grown
    return band


def generate_scene(
    rng: np.random.Generator, image_size: int, *, ignore_band: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene.

    The background is one paint, or with probability 1/2 two paints split by a wavy line (so that
    edges alone do not mark objects). Then 3 to 6 objects are tried, each a disc, square, triangle
    (squares and triangles randomly rotated) or ring with circumradius 10-30 % of the image side,
    placed fully visible and not touching the others (an object that finds no free spot in 30 tries
    is dropped). A solid object (disc, square, triangle) large enough gets, with probability 0.7, a
    smaller disc, square or triangle inside it, labelled ``nested`` whatever its shape; nested and
    small free-standing shapes have overlapping sizes, so size alone does not identify them.

    Args:
        rng: Random stream; the scene is a deterministic function of its state.
        image_size: Side of the square image in pixels (>= 32).
        ignore_band: If > 0, pixels within this many steps of a class boundary (both sides) are
            labelled 255. 0 keeps every pixel labelled; edges are hard, so labels are exact.

    Returns:
        ``(image, label)``: uint8 (S, S, 3) RGB and uint8 (S, S) with values in 0..5 (or 255).
    """
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    size = image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    image = _paint(rng, yy, xx, size)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        across = np.cos(angle) * (xx - size / 2) + np.sin(angle) * (yy - size / 2)
        along = -np.sin(angle) * (xx - size / 2) + np.cos(angle) * (yy - size / 2)
        cycles, phase = rng.uniform(0.5, 3), rng.uniform(0, 2 * np.pi)
        wave = rng.uniform(0, 0.08) * size * np.sin(2 * np.pi * cycles * along / size + phase)
        side = across + wave > rng.uniform(-0.25, 0.25) * size
        image = np.where(side[..., None], _paint(rng, yy, xx, size), image)
    label = np.full((size, size), _BACKGROUND, dtype=np.uint8)

    placed: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(3, 7))):
        kind = int(rng.choice(_STANDALONE))
        for _attempt in range(30):
            radius = rng.uniform(0.1, 0.3) * size
            cy, cx = rng.uniform(radius + 1, size - radius - 1, size=2)
            # Bounding circles 2 px apart: shapes never touch, so none is read as part of another.
            if all(np.hypot(cy - py, cx - px) > radius + pr + 2 for py, px, pr in placed):
                break
        else:
            continue
        placed.append((cy, cx, radius))
        angle = rng.uniform(0, 2 * np.pi)
        mask = _shape_mask(kind, cy, cx, radius, angle, yy, xx, hole=rng.uniform(0.45, 0.7))
        image = np.where(mask[..., None], _contrasting_paint(rng, yy, xx, size, mask, image), image)
        label[mask] = kind

        inner_room = _inradius(kind, radius) if kind in _SOLID_SHAPES else 0.0
        if inner_room >= 10 and rng.random() < 0.7:
            inner_kind = int(rng.choice(_SOLID_SHAPES))
            inner_radius = rng.uniform(0.45, 0.7) * inner_room
            # Keep the nested shape's bounding circle 2 px inside the host's inscribed circle.
            shift = rng.uniform(0, max(inner_room - inner_radius - 2, 0))
            direction = rng.uniform(0, 2 * np.pi)
            iy, ix = cy + shift * np.sin(direction), cx + shift * np.cos(direction)
            inner = _shape_mask(inner_kind, iy, ix, inner_radius, rng.uniform(0, 2 * np.pi), yy, xx, hole=0)
            image = np.where(inner[..., None], _contrasting_paint(rng, yy, xx, size, inner, image), image)
            label[inner] = _NESTED

    image = image + rng.normal(0, _PIXEL_NOISE_STD, size=image.shape)
    if ignore_band > 0:
        label[_ignore_band(label, ignore_band)] = IGNORE_INDEX
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def _params_key(params: dict[str, int]) -> str:
    blob = json.dumps(params, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def _write_dataset(target: Path, params: dict[str, int]) -> None:
    """Generate every split into ``target`` (an empty folder); ``meta.json`` is written last."""
    for split_code, split in enumerate(_SPLITS):
        (target / "images" / split).mkdir(parents=True)
        (target / "annotations" / split).mkdir(parents=True)
        ids = [f"{split}_{i:05d}" for i in range(params[f"num_{split}"])]
        for index, sample_id in enumerate(ids):
            rng = np.random.default_rng([params["seed"], split_code, index])
            image, label = generate_scene(rng, params["image_size"], ignore_band=params["ignore_band"])
            # PNG level 1: encodes ~1.5x faster than the default 6, files ~15 % larger.
            Image.fromarray(image).save(target / "images" / split / f"{sample_id}.png", compress_level=1)
            Image.fromarray(label).save(target / "annotations" / split / f"{sample_id}.png", compress_level=1)
        (target / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    meta = {
        "classes": list(SYNTHETIC_CLASSES),
        "palette": [list(c) for c in SYNTHETIC_PALETTE],
        "ignore_index": IGNORE_INDEX,
        **params,
    }
    (target / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished ``tmp`` folder to ``final``; if another process got there first, keep theirs."""
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / "meta.json").is_file():
            raise


def ensure_synthetic(
    root: str | Path | None = None,
    *,
    num_train: int = 400,
    num_val: int = 100,
    image_size: int = 128,
    seed: int = 0,
    ignore_band: int = 0,
) -> Path:
    """Return the folder of the synthetic data set, generating it on first use.

    The data set lives in ``<root>/synthetic-v<version>-<hash>``, the hash covering every parameter,
    so different settings never share a folder and a new generator version never reads an old
    cache. It is generated in a temporary sibling folder and renamed into place, so concurrent
    callers (e.g. DDP ranks) never see a half-written folder; if two generate at once, the first
    rename wins and the other copy is discarded (identical content, as generation is seeded).

    Args:
        root: Cache folder to create the data set under; default :func:`default_cache_dir`.
        num_train: Number of training scenes.
        num_val: Number of validation scenes.
        image_size: Side of the square images in pixels.
        seed: Base seed; scene ``i`` of a split is drawn from ``default_rng([seed, split, i])``.
        ignore_band: Width of the 255 band at class boundaries (0 = none), see :func:`generate_scene`.

    Returns:
        Path of the data set folder (contains ``meta.json``).
    """
    params = {
        "version": SYNTHETIC_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
        "ignore_band": ignore_band,
    }
    parent = Path(root).expanduser() if root is not None else default_cache_dir()
    final = parent / f"synthetic-v{SYNTHETIC_VERSION}-{_params_key(params)}"
    if (final / "meta.json").is_file():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    try:
        _write_dataset(tmp, params)
        # mkdtemp creates 0700; a cache folder should be readable like any other.
        os.chmod(tmp, 0o755)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, final)
    return final
