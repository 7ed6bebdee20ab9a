"""glibc's allocator, set for PyTorch on the CPU: large buffers are reused instead of handed back to
the kernel after every use (standard library only).

A forward pass allocates and frees many tensors of a few to a few tens of MiB. With glibc's
defaults, a freed block above the mmap threshold goes back to the kernel, and so does free memory
at the top of the heap beyond the trim threshold; the next pass then pays a page fault per 4 KiB it
touches again. At ViT-S/16 512x512 that was ~27,000 faults per backbone call here (~6,500 per
full-model call right after: the count depends on the heap's history); the decoder's
1/4-resolution maps are its largest short-lived buffers. :func:`tune_malloc`
raises both thresholds, which is what PyTorch's CPU performance guide gets by preloading jemalloc or
tcmalloc: blocks up to 32 MiB come from the heap and freed memory stays in the process (up to
1 GiB at the top of the heap) for the next pass. Values are unchanged: PyTorch aligns every buffer
to 64 bytes either way. The ``vpnext`` command calls it at start; ``VPNEXT_MALLOC=0`` keeps glibc's
defaults, and so does any ``MALLOC_*_``/``GLIBC_TUNABLES`` malloc setting or a preloaded allocator
(the user's choice wins). Measured in docs/benchmarks.md.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["ENV", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "available_bytes", "setting", "tune_malloc", "tuned"]

ENV = "VPNEXT_MALLOC"
MMAP_THRESHOLD = 32 << 20  #: glibc's largest mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``)
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")
_state = {"tuned": False}


def _left_to_the_user() -> bool:
    """``VPNEXT_MALLOC=0``, malloc settings of the user's in the environment, or a preloaded allocator."""
    return (
        os.environ.get(ENV, "1") == "0"
        or any(name in os.environ for name in _USER_SETTINGS)
        or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
        or any(lib in os.environ.get("LD_PRELOAD", "") for lib in ("jemalloc", "tcmalloc", "mimalloc"))
    )


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (and the processes it forks).

    Returns:
        Whether they were set: False off Linux, without glibc, or where the user chose (see the
        module docstring).
    """
    if _state["tuned"]:
        return True
    if not sys.platform.startswith("linux") or _left_to_the_user():
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt of these)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _state["tuned"] = bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _state["tuned"]


def tuned() -> bool:
    """Whether :func:`tune_malloc` set the thresholds in this process."""
    return _state["tuned"]


def setting() -> str:
    """What benchmarks record: ``"tuned"`` or ``"glibc defaults"``."""
    return "tuned" if tuned() else "glibc defaults"


def available_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """Memory the kernel can hand out without swapping (``MemAvailable``); ``None`` where unknown."""
    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None
