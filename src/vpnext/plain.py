"""Values made plain: sizes as ``(height, width)``, objects as JSON types (standard library only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["jsonable", "optional_pair", "pair"]


def jsonable(value: Any) -> Any:
    """Plain JSON types: tuples to lists, non-finite floats to ``None``, paths and other objects to
    strings, dictionary keys to strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from an int (a square) or a pair.

    Raises:
        ValueError: Neither an int nor two values.
    """
    if isinstance(size, int):
        return (size, size)
    if len(size) != 2:
        raise ValueError(f"expected an int or (height, width), got {size!r}")
    return (int(size[0]), int(size[1]))


def optional_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """:func:`pair`, with ``None`` kept as ``None``."""
    return None if size is None else pair(size)
