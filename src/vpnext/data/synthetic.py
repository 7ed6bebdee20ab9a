"""A small procedurally generated segmentation data set, learnable in minutes, that rewards context
and detail.

Every scene is a smoothly painted background with textured regions, thin wires and small flat
shapes on it. Colours are drawn at random for every region, so the colour of one pixel says
nothing about its class (``scripts/colour_baseline.py`` measures this, see ``docs/synthetic.md``).
What separates the classes:

- ``stripes`` and ``dots``: the region's texture (a 2-D pattern a few pixels across), a local cue
  one ViT patch already shows;
- ``wire``: lines 1.5-3 px wide, thin structures a stride-16 feature map cannot place (the case
  for a 1/4-resolution pyramid);
- ``window`` and ``sign``: identical flat discs and squares, a ``window`` when it sits inside a
  textured region, a ``sign`` when it stands on the background; telling them apart needs what
  surrounds the shape (the case for context).

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
#: Version 1 (shapes told apart by outline only: disc, square, triangle, ring, nested) was not
#: learnable by a small ViT in minutes (23 mIoU after the quickstart); version 2 is this one.
SYNTHETIC_VERSION = 2

SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "stripes", "dots", "wire", "window", "sign")
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
_BACKGROUND, _STRIPES, _DOTS, _WIRE, _WINDOW, _SIGN = range(6)
# Colour distance (RGB, 0..255) a shape or wire needs from what it is drawn on, and the two colours
# of a texture from each other; without it some would be invisible and their labels pure noise.
_MIN_CONTRAST = 60.0
# Flat shapes keep this many pixels away from a region of the other context (a ``sign`` never
# touches a textured region, a ``window`` sits this far inside one).
_CONTEXT_MARGIN = 3
# Hue families (degrees) of the textures: warm stripes, cool dots. The background is painted in
# muted colours (saturation scaled by _BACKGROUND_SATURATION), so colour alone finds the textured
# regions fast; flat shapes and wires take any colour.
_TEXTURE_HUES = {_STRIPES: (-30.0, 60.0), _DOTS: (170.0, 280.0)}
_BACKGROUND_SATURATION = 0.35
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


def _rotated(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates relative to (cy, cx) in a frame rotated by ``angle``."""
    dy, dx = yy - cy, xx - cx
    return np.cos(angle) * dx + np.sin(angle) * dy, -np.sin(angle) * dx + np.cos(angle) * dy


def _contrasting_colour(rng: np.random.Generator, under_mean: np.ndarray) -> np.ndarray:
    """A colour uniform in the RGB cube at least ``_MIN_CONTRAST`` from ``under_mean`` (a few tries)."""
    colour = rng.uniform(0, 255, size=3)
    for _ in range(20):
        if np.linalg.norm(colour - under_mean) >= _MIN_CONTRAST:
            break
        colour = rng.uniform(0, 255, size=3)
    return colour


def _region(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    """A textured region's outline: an ellipse or a rotated rectangle, half-axes 15-35 % of the side."""
    a, b = rng.uniform(0.15, 0.35, size=2) * size
    cy, cx = rng.uniform(0.15, 0.85, size=2) * size
    u, v = _rotated(yy, xx, cy, cx, rng.uniform(0, np.pi))
    if rng.random() < 0.5:
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return (np.abs(u) <= a) & (np.abs(v) <= b)


def _hsv_colour(
    rng: np.random.Generator, hues: tuple[float, float], values: tuple[float, float]
) -> np.ndarray:
    """An RGB colour (0..255) with hue in ``hues`` (degrees), saturation 0.6-1, value in ``values``."""
    h = (rng.uniform(*hues) % 360.0) / 60.0
    s, v = rng.uniform(0.6, 1.0), rng.uniform(*values)
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return (np.array(rgb) + (v - c)) * 255.0


def _texture(rng: np.random.Generator, kind: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A full-canvas stripes or dots texture: a light and a dark colour of the class's hue family."""
    hues = _TEXTURE_HUES[kind]
    c1, c2 = _hsv_colour(rng, hues, (0.8, 1.0)), _hsv_colour(rng, hues, (0.3, 0.55))
    u, v = _rotated(yy, xx, 0.0, 0.0, rng.uniform(0, np.pi))
    if kind == _STRIPES:
        period = rng.uniform(5, 9)
        on = (u / period + rng.random()) % 1.0 < 0.5
    else:
        period, radius = rng.uniform(6, 10), rng.uniform(1.5, 2.5)
        du = ((u / period + rng.random()) % 1.0 - 0.5) * period
        dv = ((v / period + rng.random()) % 1.0 - 0.5) * period
        on = du**2 + dv**2 <= radius**2
    return np.where(on[..., None], c1, c2)


def _flat_shape(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float
) -> np.ndarray:
    """A disc or a rotated square of circumradius ``radius`` centred at (cy, cx)."""
    if rng.random() < 0.5:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    u, v = _rotated(yy, xx, cy, cx, rng.uniform(0, np.pi / 2))
    half = radius / np.sqrt(2.0)
    return (np.abs(u) <= half) & (np.abs(v) <= half)


def _wire(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    """A gently curved line (quadratic Bezier between two far points) 1.5-3 px wide."""
    p0, p2 = rng.uniform(-0.1, 1.1, size=(2, 2)) * size
    while np.linalg.norm(p2 - p0) < 0.6 * size:
        p2 = rng.uniform(-0.1, 1.1, size=2) * size
    p1 = (p0 + p2) / 2 + rng.normal(0, 0.15 * size, size=2)
    t = np.linspace(0.0, 1.0, 4 * size)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # (n, 2) as (y, x)
    width = rng.uniform(1.5, 3.0)
    # Every pixel within width/2 of a curve sample (samples 1/4 px apart): look in a small window
    # around each sample instead of measuring every pixel against every sample.
    reach = int(np.ceil(width / 2)) + 1
    offsets = np.arange(-reach, reach + 1)
    py = np.floor(curve[:, 0:1]).astype(int) + offsets[None, :]  # (n, w) candidate rows
    px = np.floor(curve[:, 1:2]).astype(int) + offsets[None, :]
    rows = np.broadcast_to(py[:, :, None], (len(curve), len(offsets), len(offsets)))
    cols = np.broadcast_to(px[:, None, :], rows.shape)
    d2 = (rows + 0.5 - curve[:, 0, None, None]) ** 2 + (cols + 0.5 - curve[:, 1, None, None]) ** 2
    hit = (d2 <= (width / 2) ** 2) & (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    near = np.zeros(yy.shape, dtype=bool)
    near[rows[hit], cols[hit]] = True
    return near


def _grow(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` dilated by ``steps`` pixels (4-neighbourhood)."""
    grown = mask.copy()
    for _ in range(steps):
        step = grown.copy()
        step[1:, :] |= grown[:-1, :]
        step[:-1, :] |= grown[1:, :]
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        grown = step
    return grown


def _ignore_band(label: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` steps (4-neighbourhood) of a label change, on both sides."""
    edge = np.zeros(label.shape, dtype=bool)
    diff_v = label[1:, :] != label[:-1, :]
    diff_h = label[:, 1:] != label[:, :-1]
    edge[1:, :] |= diff_v
    edge[:-1, :] |= diff_v
    edge[:, 1:] |= diff_h
    edge[:, :-1] |= diff_h
    return _grow(edge, width - 1)


def generate_scene(
    rng: np.random.Generator, image_size: int, *, ignore_band: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene.

    1. Background: one smooth paint (flat, linear gradient or smooth noise in two random colours),
       or with probability 1/2 two paints split by a wavy line, so that edges alone mark nothing.
    2. One to three textured regions (ellipses or rotated rectangles, half-axes 15-35 % of the
       side, later ones over earlier ones), each ``stripes`` (period 5-9 px) or ``dots`` (period
       6-10 px, dot radius 1.5-2.5 px) in two random colours, at a random orientation.
    3. Two to six flat shapes (disc or rotated square, circumradius 4-12 % of the side, one random
       colour contrasting with what is under it): a ``window`` when the shape lies at least
       ``_CONTEXT_MARGIN`` px inside a textured region, a ``sign`` when it is at least that far
       from every textured region; shapes never overlap. The two classes look the same: only the
       surroundings tell them apart.
    4. One to three ``wire`` curves, 1.5-3 px wide, over everything, in colours contrasting with
       what they cross.

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
        across, along = _rotated(yy, xx, size / 2, size / 2, angle)
        cycles, phase = rng.uniform(0.5, 3), rng.uniform(0, 2 * np.pi)
        wave = rng.uniform(0, 0.08) * size * np.sin(2 * np.pi * cycles * along / size + phase)
        side = across + wave > rng.uniform(-0.25, 0.25) * size
        image = np.where(side[..., None], _paint(rng, yy, xx, size), image)
    grey = image.mean(axis=-1, keepdims=True)
    image = grey + _BACKGROUND_SATURATION * (image - grey)
    label = np.full((size, size), _BACKGROUND, dtype=np.uint8)

    for _ in range(int(rng.integers(1, 4))):
        kind = _STRIPES if rng.random() < 0.5 else _DOTS
        region = _region(rng, yy, xx, size)
        image = np.where(region[..., None], _texture(rng, kind, yy, xx), image)
        label[region] = kind

    textured = (label == _STRIPES) | (label == _DOTS)
    near_texture = _grow(textured, _CONTEXT_MARGIN)
    deep_texture = ~_grow(~textured, _CONTEXT_MARGIN)
    occupied = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(2, 7))):
        # Alternate the two contexts so that windows and signs are about equally frequent.
        want_window = rng.random() < 0.5
        for _attempt in range(20):
            radius = rng.uniform(0.04, 0.12) * size
            cy, cx = rng.uniform(radius, size - radius, size=2)
            shape = _flat_shape(rng, yy, xx, cy, cx, radius)
            if not shape.any() or (_grow(shape, 2) & occupied).any():
                continue
            if want_window and deep_texture[shape].all():
                cls = _WINDOW
                break
            if not want_window and not near_texture[shape].any():
                cls = _SIGN
                break
        else:
            continue
        image[shape] = _contrasting_colour(rng, image[shape].mean(axis=0))
        label[shape] = cls
        occupied |= shape

    for _ in range(int(rng.integers(1, 4))):
        wire = _wire(rng, yy, xx, size)
        if wire.any():
            image[wire] = _contrasting_colour(rng, image[wire].mean(axis=0))
            label[wire] = _WIRE

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
