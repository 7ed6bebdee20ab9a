"""Build a :class:`~vpnext.models.VPNeXt` from experiment configs, without a Trainer.

``vpnext flops`` and ``vpnext benchmark`` take the same ``--config`` files and ``--model.*`` /
``--data.*`` options as ``vpnext fit`` and need only the network. The configs are read with a
jsonargparse parser that knows two sections, typed by the classes ``vpnext fit`` instantiates:
``model`` (:class:`~vpnext.training.SegmentationModule`: VPNeXt's constructor arguments plus
loss, optimiser and evaluation options) and ``data`` (:class:`~vpnext.data.SegDataModule`). So
keys, choices and value syntax are checked exactly as in training, later files win over earlier
ones and options win over files. Other top-level sections (``trainer``, ``run``,
``seed_everything``…) are dropped; a section given as a file name (``data: data/x.yaml``) is read
from next to the config that names it, else from the working directory.

Two values that ``vpnext fit`` links from the data module are resolved the same way here:
``num_classes`` comes from the dataset's spec (:func:`vpnext.data.get_dataset_spec`) and
``img_size`` from ``data.crop_size`` (else the dataset's crop), unless ``--model.num_classes`` /
``--model.img_size`` give them. Weights are never downloaded: ``pretrained=True`` becomes random
init (cost and speed do not depend on the weights); a local weights file is kept.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vpnext.models import VPNeXt
from vpnext.plain import jsonable, pair

__all__ = [
    "SWITCHES",
    "ModelConfig",
    "build_model_from_config",
    "config_parser",
    "load_model_config",
    "write_json",
]

#: The constructor arguments that select an ablation variant (reported next to every figure).
SWITCHES = (
    "backbone",
    "aux",
    "aux_layers",
    "head",
    "upsampler",
    "hiclr_depth",
    "decoder",
    "decoder_dim",
    "pyramid_dim",
    "num_heads",
    "head_convs",
    "fuse_kernel",
    "segmenter_dim",
    "segmenter_heads",
    "replay_stop_grad",
    "pyramid_embed",
    "deform_impl",
)

_SECTIONS = ("model", "data")


@dataclass
class ModelConfig:
    """The resolved model part of one or more experiment configs.

    Attributes:
        model_args: Keyword arguments of :class:`~vpnext.models.VPNeXt`.
        module_args: The other ``model:`` keys (loss, optimiser, evaluation options).
        data_args: The ``data:`` section.
        image_size: ``(height, width)`` of the training crop (the default input size of the tools).
        num_classes_source: ``"model"`` (given) or ``"data:<dataset>"`` (from the dataset spec).
        configs: The config files, in the order they were merged.
        notes: Changes made for cost measurement (e.g. hub weights not downloaded).
    """

    model_args: dict[str, Any]
    module_args: dict[str, Any]
    data_args: dict[str, Any]
    image_size: tuple[int, int]
    num_classes_source: str
    configs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def switches(self) -> dict[str, Any]:
        """The ablation switches of :data:`SWITCHES` with their values."""
        return {name: self.model_args[name] for name in SWITCHES}

    def build(self, **changes: Any) -> VPNeXt:
        """A new VPNeXt from :attr:`model_args`, with ``changes`` applied (e.g. ``aux='none'``)."""
        return VPNeXt(**{**self.model_args, **changes})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: switches, classes, image size, dataset, config files, notes."""
        return {
            **jsonable(self.switches),
            "num_classes": self.model_args["num_classes"],
            "num_classes_source": self.num_classes_source,
            "img_size": list(self.image_size),
            "pretrained": jsonable(self.model_args["pretrained"]),
            "dataset": self.data_args.get("dataset"),
            "configs": self.configs,
            "notes": self.notes,
        }


def _read_sections(path: Path) -> dict[str, Any]:
    """The ``model``/``data`` sections of one config file (sections named by file are read)."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a mapping with model:/data: sections")
    sections: dict[str, Any] = {}
    for name in _SECTIONS:
        value = content.get(name)
        if isinstance(value, str):
            candidates = [path.parent / value, Path(value)]  # next to the config, then the cwd
            sub_path = next((c for c in candidates if c.is_file()), None)
            if sub_path is None:
                raise FileNotFoundError(f"{path}: {name}: file not found: {value}")
            value = yaml.safe_load(sub_path.read_text()) or {}
            value = value.get(name, value) if isinstance(value, dict) else value
        if value is not None:
            sections[name] = value
    return sections


@functools.cache  # one parser per process: building it reads every signature (~0.3 s)
def _parser() -> Any:
    from jsonargparse import ActionConfigFile, ArgumentParser

    from vpnext.data import SegDataModule
    from vpnext.training import SegmentationModule

    parser = ArgumentParser(exit_on_error=False, prog="vpnext")
    parser.add_argument("--config", action=ActionConfigFile)
    # num_classes is required by the module but linked from the data in `vpnext fit`: optional here.
    parser.add_class_arguments(SegmentationModule, "model", skip={"num_classes"})
    parser.add_argument("--model.num_classes", type=int | None, default=None)
    parser.add_class_arguments(SegDataModule, "data")
    return parser


def load_model_config(configs: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> ModelConfig:
    """Merge config files and ``--model.x=y``/``--data.x=y`` options into a :class:`ModelConfig`.

    Args:
        configs: LightningCLI-style YAML files; later ones win.
        overrides: Options such as ``--model.aux=deep_supervision`` or ``--data.dataset voc_aug``;
            they win over every file.

    Returns:
        The resolved configuration.

    Raises:
        FileNotFoundError: A config file (or a section file it names) is missing.
        ValueError: An unknown key, a value of the wrong type or choice, an unknown dataset, or a
            ``pretrained`` weights file given as an option that does not exist.
    """
    from argparse import ArgumentError

    from vpnext.data import get_dataset_spec
    from vpnext.models import MODEL_ARGS

    args: list[str] = []
    for path in configs:
        args += ["--config", yaml.safe_dump(_read_sections(Path(path)))]
    stray = [o for o in overrides if o.startswith("-") and not o.startswith(("--model.", "--data."))]
    if stray:
        raise ValueError(f"unknown option(s) {' '.join(stray)}: only --model.* and --data.* are accepted")
    try:
        parsed = _parser().parse_args([*args, *overrides])
    except ArgumentError as err:
        raise ValueError(" ".join(str(err).split())) from None
    model = parsed.model.as_dict()
    data = parsed.data.as_dict()

    spec = None
    if model["num_classes"] is None or model["img_size"] is None:
        try:
            spec = get_dataset_spec(
                data["dataset"], data.get("root") if data["dataset"] == "folder" else None
            )
        except KeyError as err:
            raise ValueError(str(err.args[0])) from None
    source = "model"
    if model["num_classes"] is None:
        model["num_classes"] = spec.num_classes
        source = f"data:{data['dataset']}"
    if model["img_size"] is None:
        model["img_size"] = pair(data["crop_size"]) if data.get("crop_size") is not None else spec.crop_size
    image_size = pair(model["img_size"])

    notes = []
    weights = model["pretrained"]
    if weights is True:
        model["pretrained"] = False
        notes.append("pretrained=True: hub weights not downloaded, random init (cost is weight-independent)")
    elif isinstance(weights, (str, Path)) and not Path(weights).expanduser().is_file():
        if any(o.startswith("--model.pretrained") for o in overrides):
            raise ValueError(f"--model.pretrained: weights file not found: {weights}")
        model["pretrained"] = False
        notes.append(f"pretrained={weights}: file not found here, random init")

    model_args = {name: model[name] for name in MODEL_ARGS}
    module_args = {k: v for k, v in model.items() if k not in model_args}
    return ModelConfig(
        model_args=model_args,
        module_args=module_args,
        data_args=data,
        image_size=image_size,
        num_classes_source=source,
        configs=[str(p) for p in configs],
        notes=notes,
    )


def build_model_from_config(
    configs: Sequence[str | Path] = (), overrides: Sequence[str] = ()
) -> tuple[VPNeXt, ModelConfig]:
    """Build the VPNeXt an experiment config describes (see :func:`load_model_config`).

    Args:
        configs: YAML config files, merged in order.
        overrides: ``--model.*``/``--data.*`` options, applied last.

    Returns:
        ``(model, config)``: the model in train mode and its resolved configuration.
    """
    config = load_model_config(configs, overrides)
    return config.build(), config


def config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every model-config tool shares (``vpnext flops``, ``vpnext benchmark``): configs,
    input size, batch size and a JSON output; ``--model.*``/``--data.*`` overrides are parsed later."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        allow_abbrev=False,
        epilog="Every --model.<arg>=<value> / --data.<arg>=<value> of `vpnext fit` overrides the configs.",
    )
    parser.add_argument("--config", action="append", default=[], type=Path, help="YAML config; repeatable")
    parser.add_argument(
        "--image-size", nargs=2, type=int, metavar=("H", "W"), help="input size (default: the training crop)"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument("--json", type=Path, help="also write the result to this JSON file")
    return parser


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` as indented JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
