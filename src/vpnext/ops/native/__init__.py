"""Native CPU kernels, compiled on first use with ``torch.utils.cpp_extension`` and cached.

One kernel today: the forward of ``vpnext::deform_conv3x3`` on CPU in float32, with the bilinear
sampling fused into the GEMM (``deform_conv3x3.cpp``). :mod:`vpnext.ops.deform_conv` uses it for
inference (no gradient needed) when ``impl="auto"``; training keeps the PyTorch implementation, so
a training run computes exactly what it computed before the kernel existed.

Building needs a C++ compiler and ``ninja`` (a dependency of this package). It happens once per
machine, Python, torch version and kernel source (about a minute on 2 cores), under torch's
extension cache (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) in
``vpnext/<name>_<hash>``; ``make install`` does it up front (``python -m vpnext.ops.native``).
Where it cannot be built, the PyTorch implementation is used and one warning says why.
``VPNEXT_NATIVE_OPS=0`` turns the kernel off (no build).

On x86 CPUs that have AVX2 (``torch.backends.cpu.get_cpu_capability()``), the kernel is compiled
with ``-mavx2 -mfma``: the four-corner blend then runs 8 floats at a time, about twice as fast as
the baseline SSE2 build (measured; docs/benchmarks.md). Where torch runs on OpenMP (its Linux
wheels) the kernel is compiled with ``-fopenmp``, so that its blocks run on torch's threads.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["ENV", "build", "deform_conv3x3", "enabled"]

ENV = "VPNEXT_NATIVE_OPS"
_SOURCE = Path(__file__).with_name("deform_conv3x3.cpp")


def enabled() -> bool:
    """Whether the native kernels may be used (``VPNEXT_NATIVE_OPS`` is not ``0``)."""
    return os.environ.get(ENV, "1") != "0"


def _isa() -> tuple[str, list[str]]:
    """The build's name suffix and instruction-set flags for this CPU (what torch dispatches to)."""
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        # AVX-512 builds measured no faster (16.2 against 18.5 ms at 1x48x128x128, interleaved).
        return "_avx2", ["-mavx2", "-mfma"]
    return "", []


def _cache_root() -> Path:
    """torch's extension cache: ``$TORCH_EXTENSIONS_DIR``, else ``<user cache>/torch_extensions``."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"


def _openmp() -> list[str]:
    """``-fopenmp`` where torch itself runs on OpenMP (Linux wheels): without it ``at::parallel_for``
    compiles to a plain loop and the kernel samples on one thread. The extension then shares the
    OpenMP runtime torch has loaded (``libgomp.so.1``, bundled with the wheel) and its thread count."""
    return ["-fopenmp"] if sys.platform.startswith("linux") and torch.backends.openmp.is_available() else []


def _build_target() -> tuple[str, Path, list[str]]:
    """Module name, build folder and compiler flags. The name carries a hash of everything the
    binary depends on (source, flags, torch and Python versions): a changed input is a new build,
    and an existing file of that name is up to date."""
    suffix, isa_flags = _isa()
    flags = ["-O3", *isa_flags, *_openmp()]
    versions = (" ".join(flags), torch.__version__, sys.version)
    inputs = [_SOURCE.read_bytes(), *(text.encode() for text in versions)]
    key = hashlib.sha256(b"\0".join(inputs)).hexdigest()[:16]
    name = f"vpnext_deform_conv3x3{suffix}_{key}"
    return name, _cache_root() / "vpnext" / name, flags


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """cpp_extension runs ``ninja`` from PATH; the ``ninja`` package installs it next to this
    interpreter's scripts, which are not on PATH when ``.venv/bin/vpnext`` runs unactivated."""
    scripts = sysconfig.get_path("scripts")
    old = os.environ.get("PATH", "")
    if shutil.which("ninja") is None and scripts:
        os.environ["PATH"] = os.pathsep.join([scripts, old])
    try:
        yield
    finally:
        os.environ["PATH"] = old


def build() -> ModuleType:
    """The deformable-conv kernel's module: loaded from the cache, else compiled first (one line on
    stderr says so); raises on failure."""
    name, folder, flags = _build_target()
    library = folder / f"{name}.so"
    if not library.is_file():
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None:
            raise RuntimeError(f"no C++ compiler ({compiler}) on PATH")
        print(
            f"vpnext: compiling the native CPU deformable conv (once, about a minute; cached in "
            f"{folder.parent}; {ENV}=0 skips it)",
            file=sys.stderr,
            flush=True,
        )
        # cpp_extension logs a CUDA_HOME notice at import on CPU-only machines; not ours to show.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        from torch.utils import cpp_extension

        folder.mkdir(parents=True, exist_ok=True)
        with _ninja_on_path():
            sources = [str(_SOURCE)]
            cpp_extension.load(
                name,
                sources,
                extra_cflags=flags,
                extra_ldflags=_openmp(),  # link the OpenMP runtime the flag compiles against
                build_directory=str(folder),
                verbose=False,
            )
    # Loading the file directly skips cpp_extension's up-to-date check (a ninja run, ~1 s a process).
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reason(error: Exception) -> str:
    """One short line: a failed compile's message carries the whole compiler command and output."""
    text = str(error).strip()
    if text.startswith("Error building extension"):
        return f"{text.split(':', 1)[0]}; `python -m vpnext.ops.native` shows the compiler's output"
    return text.splitlines()[0] if text else type(error).__name__


@functools.cache
def deform_conv3x3() -> ModuleType | None:
    """The compiled kernel's module (``forward(x, offset, weight, bias, block)``), or None.

    None when ``VPNEXT_NATIVE_OPS=0`` or when the build fails (one warning with the reason); the
    result is kept for the life of the process.
    """
    if not enabled():
        return None
    try:
        return build()
    except Exception as error:  # no compiler, no ninja, a compile error: fall back, say why once
        warnings.warn(
            f"vpnext: the native CPU deformable conv could not be built ({_reason(error)}); using the "
            f"PyTorch implementation (same values, slower). {ENV}=0 skips the attempt.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def main() -> int:
    """``python -m vpnext.ops.native``: build the kernels now (``make install`` runs it)."""
    if not enabled():
        print(f"vpnext: native kernels off ({ENV}=0); nothing built")
        return 0
    try:
        module = build()
    except Exception as error:  # the compiler's own output, if any, is already on the terminal
        print(f"vpnext: native CPU kernels not built ({_reason(error)}); PyTorch implementations are used")
        return 0
    print(f"vpnext: native CPU kernels ready ({module.__file__})")
    return 0
