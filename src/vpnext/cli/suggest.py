"""“Did you mean” suggestions for unknown commands and flags (standard library only)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

__all__ = ["close_words", "did_you_mean"]


def close_words(given: str, known: Sequence[str]) -> list[str]:
    """Up to three of ``known`` closest to ``given``; words that start with ``given`` come first
    (they are what a prefix-matching parser would have picked silently)."""
    prefixed = sorted(k for k in known if k.startswith(given) and k != given)
    close = difflib.get_close_matches(given, known, n=2, cutoff=0.75)
    return list(dict.fromkeys([*prefixed[:2], *close]))[:3]


def did_you_mean(choices: Sequence[str]) -> str:
    """``" (did you mean X or Y?)"``, empty without choices (see :func:`close_words`)."""
    return f" (did you mean {' or '.join(choices)}?)" if choices else ""
