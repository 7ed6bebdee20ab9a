"""The one exception type the data pipeline raises for bad data on disk."""

from __future__ import annotations

from vpnext.errors import OneLineError


class DatasetError(OneLineError, ValueError):
    """A dataset on disk is missing, incomplete or malformed, or a split asked of it cannot be made.

    The message always names the offending file (or folder) and the problem, so a run fails before
    training starts instead of silently skipping or mis-reading samples.
    """
