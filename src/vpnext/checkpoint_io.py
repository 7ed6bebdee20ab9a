"""Reading and writing checkpoint and weights files, with torch alone (no Lightning).

* :func:`safe_load` is the one way vpnext reads a checkpoint or weights file: tensors and plain
  containers only (``torch.load(weights_only=True)``). A file that carries any other pickled object
  is refused with one line (:class:`UnsafeCheckpointError`) and nothing in it runs; an unreadable
  file raises :class:`CorruptCheckpointError`.
* :func:`atomic_torch_save` writes through a temporary file in the target folder, flushes it to
  disk and renames it over the old one, so a kill at any moment leaves either the previous complete
  file or the new complete file.
* :func:`load_weights`, :func:`state_dict_mismatch` and :func:`describe_mismatch` load weights
  into a module and name, in one line, the keys and shapes that do not fit;
  :func:`check_backbone_weights` checks a backbone weights file against a timm ViT's shapes.
* :func:`first_non_finite` finds a NaN or infinite tensor (checkpoints with one are not written).

Used by the Lightning callbacks of :mod:`vpnext.training`, by :mod:`vpnext.inference` (which needs
no Lightning) and by the command line's input checks.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from vpnext.errors import OneLineError
from vpnext.files import atomic_write

__all__ = [
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "UnsafeCheckpointError",
    "atomic_torch_save",
    "check_backbone_weights",
    "check_weights_file",
    "describe_mismatch",
    "first_non_finite",
    "load_state_dict_file",
    "load_weights",
    "safe_load",
    "state_dict_mismatch",
]


class UnsafeCheckpointError(OneLineError):
    """A checkpoint or weights file holds pickled objects other than tensors and plain containers."""


class CheckpointWriteError(OneLineError):
    """A checkpoint could not be written (folder not writable, disk full); the old one is intact."""


class CorruptCheckpointError(OneLineError):
    """A checkpoint or weights file that cannot be read (truncated, empty, not a checkpoint).

    Args:
        message: The whole message (it names the file).
        reason: Why the file could not be read, without the file name (default: ``message``).
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or str(self)


class NonFiniteLossError(OneLineError):
    """A loss term became NaN or infinite; the run stopped before the update."""


class NonFiniteWeightsError(OneLineError):
    """A checkpoint about to be written holds NaN or infinite weights; it was not written."""


def safe_load(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors.

    Raises:
        FileNotFoundError: No such file.
        UnsafeCheckpointError: The file carries a pickled payload (a class, a function call); it
            was refused before anything in it ran.
        CorruptCheckpointError: The file is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found is None:
            reason = _last_line(err)
            raise CorruptCheckpointError(f"{path}: not a readable checkpoint ({reason})", reason) from None
        raise UnsafeCheckpointError(
            f"{path}: refused: the file carries a pickled Python object ({found.group(1)}), not only "
            "tensors; vpnext loads weights_only and ran nothing from it"
        ) from None
    except Exception as err:  # torch's readers fail in many ways on foreign bytes (KeyError, ...)
        reason = _last_line(err)
        if not isinstance(err, (RuntimeError, OSError, ValueError, EOFError)):
            reason = f"{type(err).__name__}: {reason}"  # e.g. "KeyError: 101" rather than "101"
        raise CorruptCheckpointError(f"{path}: not a readable checkpoint ({reason})", reason) from None


def _last_line(err: BaseException) -> str:
    parts = [p.strip() for p in str(err).split("\n\n") if p.strip() and "documentation" not in p]
    text = parts[-1] if parts else type(err).__name__
    # torch's zip reader appends a paragraph of advice to the reason; keep the reason.
    text, advice, _ = text.partition(" This is an internal miniz error")
    text = text.rstrip(".") if advice else text
    return " ".join(text.split())[:200]


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through :func:`vpnext.files.atomic_write` (temporary file, fsync,
    rename): a kill at any moment leaves the previous complete file or the new one.

    Raises:
        OSError: The folder is not writable or the disk is full; ``path`` is left as it was.
    """
    # Serialised in memory first (as Lightning's own writer does): torch's zip writer reports a
    # failing file write (disk full) as an opaque RuntimeError, Python's write as the OSError it is.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getbuffer())


def check_weights_file(path: str | Path) -> Any:
    """Open a weights file the way it will be loaded and refuse it if it is unsafe or unreadable.

    ``.safetensors`` files are read with safetensors (which holds no code); everything else
    through :func:`safe_load`.

    Returns:
        What :func:`safe_load` read (memory-mapped where the format allows); ``None`` for
        ``.safetensors`` and ``.npz`` files.

    Raises:
        UnsafeCheckpointError: A pickled payload.
        CorruptCheckpointError: Not readable.
    """
    path = Path(path)
    if path.suffix == ".npz":  # numpy archives (timm's JAX weights) are read with allow_pickle=False
        return None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                list(handle.keys())
        except Exception as err:  # safetensors raises its own error types
            raise CorruptCheckpointError(
                f"{path}: not a readable safetensors file ({_last_line(err)})"
            ) from None
        return None
    try:
        return safe_load(path, mmap=True)
    except CorruptCheckpointError:
        return safe_load(path)  # files in torch's legacy (non-zip) format cannot be memory-mapped


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a Lightning checkpoint (its ``state_dict``) or of a plain state-dict file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        check_weights_file(path)
        from safetensors.torch import load_file

        return load_file(str(path))
    loaded = safe_load(path)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{path}: holds no state dict (a mapping of parameter names to tensors)")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def state_dict_mismatch(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """Keys ``given`` lacks, keys it has in excess, and ``(key, given shape, expected shape)``."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        (k, tuple(given[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    return missing, unexpected, shapes


def describe_mismatch(
    missing: list[str],
    unexpected: list[str],
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    limit: int = 6,
) -> str:
    """One line naming the mismatched keys and shapes (the first ``limit`` of each kind)."""

    def listed(items: list[str]) -> str:
        more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    parts = []
    if shapes:
        parts.append(
            f"{len(shapes)} with other shapes (file vs model): "
            + listed([f"{k} {list(a)} vs {list(b)}" for k, a, b in shapes])
        )
    if missing:
        parts.append(f"{len(missing)} missing from the file: {listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model: {listed(unexpected)}")
    return "; ".join(parts)


def _align_prefix(expected: dict[str, Any], given: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a bare ``VPNeXt`` state dict for a ``SegmentationModule`` (keys under ``model.``)."""
    if any(k in expected for k in given):
        return given
    prefixed = {f"model.{k}": v for k, v in given.items()}
    return prefixed if any(k in expected for k in prefixed) else given


def load_weights(module: torch.nn.Module, path: str | Path, strict: bool = True) -> str:
    """Initialise ``module`` from a weights file (fine-tuning), no training state.

    Args:
        module: The model (a ``SegmentationModule`` or a ``VPNeXt``).
        path: A vpnext checkpoint or a state-dict file (``.pt``/``.pth``/``.safetensors``).
        strict: Refuse any key or shape difference; with ``False`` load the tensors whose name and
            shape match and keep the module's own values for the others.

    Returns:
        A one-line summary of what was loaded.

    Raises:
        ValueError: ``strict`` and the file does not fit (the message lists the differences).
    """
    expected = module.state_dict()
    given = _align_prefix(expected, load_state_dict_file(path))
    missing, unexpected, shapes = state_dict_mismatch(expected, given)
    if strict and (missing or unexpected or shapes):
        raise ValueError(f"{path} does not fit the model: {describe_mismatch(missing, unexpected, shapes)}")
    bad = {k for k, _, _ in shapes}
    usable = {k: v for k, v in given.items() if k in expected and k not in bad}
    if not usable:
        raise ValueError(f"{path}: no tensor matches the model by name and shape; wrong file?")
    module.load_state_dict(usable, strict=False)
    summary = f"loaded {len(usable)} of {len(expected)} tensors from {path}"
    if missing or unexpected or shapes:
        summary += (
            f"; kept the model's own values for the rest ({describe_mismatch(missing, unexpected, shapes)})"
        )
    return summary


def first_non_finite(state_dict: dict[str, Any]) -> str | None:
    """Name of the first floating tensor in ``state_dict`` holding NaN or inf, else ``None``."""
    for name, value in state_dict.items():
        if (
            isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and not bool(torch.isfinite(value).all())
        ):
            return name
    return None


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors of a weights file (memory-mapped; nothing runs)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    try:
        loaded = safe_load(path, mmap=True)
    except CorruptCheckpointError:
        loaded = safe_load(path)
    if isinstance(loaded, dict):
        for key in ("state_dict", "model", "state_dict_ema"):  # the containers timm unwraps too
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict):
        return {}
    return {k: tuple(v.shape) for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def check_backbone_weights(backbone: str, path: str | Path) -> None:
    """Refuse a ``model.pretrained`` file that does not hold weights of ``backbone``.

    timm loads such a file without complaint when few keys match, and the run would train from a
    random backbone. Checked: at least half of the backbone's tensors are present (after the
    ``module.``/``model.``/``backbone.`` prefixes timm also strips) and every present tensor has
    the backbone's shape (the position embedding excepted: it is resampled).

    Raises:
        ValueError: The file does not fit; the message lists what differs.
    """
    import timm

    path = Path(path)
    if path.suffix == ".npz":  # original JAX checkpoints: timm's own loader maps their names
        return
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False, num_classes=0)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = _tensor_shapes(path)
    for prefix in ("module.", "model.", "backbone.", "vit."):
        if given and all(k.startswith(prefix) for k in given):
            given = {k[len(prefix) :]: v for k, v in given.items()}
    found = [k for k in expected if k in given]
    if len(found) < len(expected) / 2:
        sample = ", ".join(list(given)[:4]) or "no tensors"
        raise ValueError(
            f"{path} does not hold {backbone} weights: {len(found)} of its {len(expected)} tensors "
            f"found (the file has e.g. {sample})"
        )
    shapes = [(k, given[k], expected[k]) for k in found if given[k] != expected[k] and k != "pos_embed"]
    if shapes:
        raise ValueError(f"{path} does not fit {backbone}: {describe_mismatch([], [], shapes)}")
