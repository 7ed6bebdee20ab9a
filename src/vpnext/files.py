"""Files written whole or not at all (standard library only).

:func:`atomic_write` writes through a temporary file in the target folder, flushes it to disk and
renames it over the target, so a reader (or a kill at any moment) sees the old complete file or
the new complete file, never a part; the temporary file is removed when the write fails.
Checkpoints (:func:`vpnext.checkpoint_io.atomic_torch_save`) and ``results.json`` are written so.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_json"]


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync, and a rename over ``path``.

    Raises:
        OSError: The folder is not writable or the disk is full; ``path`` is left as it was and the
            temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the files are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_json(path: Path, record: Any) -> None:
    """:func:`atomic_write` of ``record`` as indented JSON (with a final newline)."""
    atomic_write(path, (json.dumps(record, indent=2) + "\n").encode())
