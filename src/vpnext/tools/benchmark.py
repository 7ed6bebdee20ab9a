"""``vpnext benchmark``: inference latency and training-step time of a configured VPNeXt.

Everything is measured in one process, in one run, so that the ratios are comparable even on a
shared machine:

- inference (eval mode, ``torch.no_grad``) of (a) the configured ``model``, (b) the ``backbone``
  alone (patch embedding, blocks, final norm) and (c) ``deep_supervision``, the paper's baseline
  (``aux='deep_supervision', upsampler='bilinear'``; in eval this is the context head at 1/16 with
  bilinear logits), each reported as a ratio to the backbone;
- one training step (forward, :class:`~vpnext.losses.SegmentationLoss`, backward, AdamW step with
  the training's parameter groups) for ``aux='deep_supervision'`` and ``aux='vcr'`` with every
  other setting as configured, reported as the ratio VCR / deep supervision.

Timing: ``warmup`` untimed calls each, then ``repeats`` rounds in which every candidate runs once,
in rotating order, so that load from other processes hits all of them alike; medians and p90
(nearest rank) per candidate. Candidates of one comparison are built from the same seed.

Peak memory of one call after the timing (so AdamW's state already exists in training): the
most tensor memory the call holds on top of what was allocated before it
(:func:`peak_memory_mb`): ``torch.cuda.max_memory_allocated`` on CUDA, the running sum of the
profiler's allocation events on CPU.

``--bf16`` runs forward (and loss) under ``torch.autocast(bfloat16)``. ``--compile`` wraps every
candidate in ``torch.compile`` (one graph each: the deformable conv is an opaque op, not a graph
break); the warm-up calls pay the compilation. ``--per-module`` adds exclusive wall time and MACs
per decoder module of the configured model.

Usage::

    vpnext benchmark --config experiments/vitup.yaml --image-size 512 512 --repeats 10 [--model.x=y ...]
"""

from __future__ import annotations

import inspect
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vpnext import memory
from vpnext.losses import SegmentationLoss
from vpnext.models import VPNeXt
from vpnext.models.macs import count_macs
from vpnext.tools.model_config import ModelConfig, config_parser, load_model_config, write_json
from vpnext.tools.peers import PEERS, BackboneOnly, format_peers, run_peers
from vpnext.tools.timing import (
    autocast,
    inference_call,
    memory_method,
    peak_memory_mb,
    summarize,
    sync,
    time_interleaved,
)
from vpnext.training.optim import build_optimizer
from vpnext.training.results import device_name

__all__ = ["BackboneOnly", "main", "run_benchmark", "time_interleaved"]

#: Changes that turn the configured model into the paper's deep-supervision baseline.
DEEP_SUPERVISION = {"aux": "deep_supervision", "upsampler": "bilinear"}
TRAIN_AUX = ("deep_supervision", "vcr")


def _seeded(build: Callable[[], nn.Module], device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return build().to(device)


def training_loss(config: ModelConfig) -> SegmentationLoss:
    """The configured training loss: the ``model:`` keys that are :class:`SegmentationLoss` arguments."""
    args = config.module_args
    return SegmentationLoss(
        **{name: args[name] for name in inspect.signature(SegmentationLoss).parameters if name in args}
    )


def _train_fn(
    model: VPNeXt, config: ModelConfig, images: Tensor, labels: Tensor, bf16: bool, compile_: bool
) -> Callable[[], None]:
    args = config.module_args
    criterion = training_loss(config)
    optimizer = build_optimizer(
        model, args["lr"], args["weight_decay"], args["layer_decay"], args["decoder_lr_mult"]
    )
    runner = torch.compile(model.forward_train) if compile_ else model.forward_train

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(images.device, bf16):
            loss = criterion(runner(images), labels)["loss"]
        loss.backward()
        optimizer.step()

    return step


def _random_labels(batch: int, size: tuple[int, int], classes: int, device: torch.device) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (batch, *size), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.05] = 255  # some ignored pixels
    return labels.to(device)


def _measure(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device, batch: int
) -> dict[str, dict[str, float]]:
    times = time_interleaved(fns, repeats, warmup, device)
    return {
        name: {**summarize(times[name], batch), "peak_mem_mb": peak_memory_mb(fn, device)}
        for name, fn in fns.items()
    }


def module_times(
    model: nn.Module, images: Tensor, groups: dict[str, str], repeats: int, warmup: int
) -> dict[str, float]:
    """Median exclusive wall time (ms) per group of modules in one eval forward (no autocast).

    Time is attributed like MACs in :func:`~vpnext.models.macs.count_macs`: to the innermost
    running module under a group prefix (longest prefix wins), else to ``"other"``.
    """
    ordered = sorted(groups.items(), key=lambda item: len(item[1]), reverse=True)
    stack: list[str] = []
    spent: dict[str, float] = {}
    clock = [0.0]

    def settle() -> None:
        sync(images.device)
        now = time.perf_counter()
        key = stack[-1] if stack else "other"
        spent[key] = spent.get(key, 0.0) + now - clock[0]
        clock[0] = now

    def hooks(name: str) -> tuple[Callable[..., None], Callable[..., None]]:
        own = next((g for g, p in ordered if name == p or name.startswith(p + ".")), None)

        def enter(*_: Any) -> None:
            settle()
            stack.append(own or (stack[-1] if stack else "other"))

        def leave(*_: Any) -> None:
            settle()
            stack.pop()

        return enter, leave

    handles = []
    for name, module in model.named_modules():
        enter, leave = hooks(name)
        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    runs: list[dict[str, float]] = []
    try:
        with torch.no_grad():
            for i in range(warmup + repeats):
                spent.clear()
                clock[0] = time.perf_counter()
                model(images)
                settle()
                if i >= warmup:
                    runs.append(dict(spent))
    finally:
        for handle in handles:
            handle.remove()
    return {name: 1e3 * statistics.median(r.get(name, 0.0) for r in runs) for name in runs[0]}


def _decoder_groups(model: nn.Module, depth: int = 2) -> dict[str, str]:
    """``backbone`` whole; every other module down to ``depth`` name levels.

    At depth 2, ``upsampler.steps.0.deform`` counts towards ``upsampler.steps``.
    """
    names = {"backbone": "backbone"}
    for name, _ in model.named_modules():
        parts = name.split(".")
        if name and parts[0] != "backbone" and len(parts) <= depth:
            names[name] = name
    return names


def per_module_report(
    model: VPNeXt, images: Tensor, repeats: int, warmup: int, depth: int = 2
) -> dict[str, dict[str, float]]:
    """Exclusive median time and MACs per module group of ``model`` (eval, fp32, no compile).

    Args:
        model: The model.
        images: One input batch.
        repeats: Timed forward passes (median per group).
        warmup: Untimed passes first.
        depth: Name levels of the decoder groups (see :func:`_decoder_groups`).

    Returns:
        Group -> ``{"ms", "gmacs"}`` for every group with time or MACs, ``other`` included.
    """
    model.eval()
    groups = _decoder_groups(model, depth)
    times = module_times(model, images, groups, repeats, warmup)
    macs = count_macs(model, images, groups=groups).by_group
    rows = {}
    for name in [*groups, "other"]:
        if times.get(name, 0.0) or macs.get(name, 0):
            rows[name] = {"ms": times.get(name, 0.0), "gmacs": macs.get(name, 0) / 1e9}
    return rows


def run_benchmark(
    config: ModelConfig,
    image_size: tuple[int, int],
    batch_size: int = 1,
    repeats: int = 10,
    warmup: int = 2,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    compile_: bool = False,
    train: bool = True,
    train_batch_size: int | None = None,
    per_module: int = 0,
) -> dict[str, Any]:
    """Run the whole benchmark and return its JSON document.

    Args:
        config: The resolved experiment config (the ``model`` candidate).
        image_size: Input ``(height, width)``.
        batch_size: Images per inference call.
        repeats: Timed rounds.
        warmup: Untimed calls per candidate before timing.
        device: ``cpu`` or ``cuda``.
        bf16: Autocast forward passes (and the loss) to bfloat16.
        compile_: ``torch.compile`` every candidate.
        train: Also time the training step of deep supervision vs VCR.
        train_batch_size: Images per training step (default: ``batch_size``).
        per_module: If > 0, also report exclusive time and MACs per decoder module of the model,
            down to this many name levels (2: ``upsampler.steps``, 4: ``upsampler.steps.0.deform``).

    Returns:
        ``environment``, ``config``, ``inference`` (per candidate: median/p90 ms, images/s, peak
        memory, GMACs), ``ratios`` and, with ``train``, ``training`` and its ratio.
    """
    device = torch.device(device)
    images = torch.randn(batch_size, 3, *image_size, device=device)
    model = _seeded(config.build, device).eval()
    baseline = _seeded(lambda: config.build(**DEEP_SUPERVISION), device).eval()
    backbone = BackboneOnly(model).eval()
    candidates = {"model": model, "backbone": backbone, "deep_supervision": baseline}
    fns = {name: inference_call(m, images, bf16, compile_) for name, m in candidates.items()}
    inference = _measure(fns, repeats, warmup, device, batch_size)
    for name, module in candidates.items():
        inference[name]["gmacs"] = count_macs(module, images[:1]).macs / 1e9
    ms = {name: row["median_ms"] for name, row in inference.items()}
    gmacs = {name: row["gmacs"] for name, row in inference.items()}
    ratios = {
        "model_vs_backbone": ms["model"] / ms["backbone"],
        "deep_supervision_vs_backbone": ms["deep_supervision"] / ms["backbone"],
        "model_vs_deep_supervision": ms["model"] / ms["deep_supervision"],
        "gmacs_model_vs_backbone": gmacs["model"] / gmacs["backbone"],
        "gmacs_model_vs_deep_supervision": gmacs["model"] / gmacs["deep_supervision"],
    }
    result: dict[str, Any] = {
        "environment": {
            "device": device.type,
            "device_name": device_name(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "bf16": bf16,
            "compile": compile_,
            "load_average_start": list(os.getloadavg()),
            "memory_method": memory_method(device),
            "malloc": memory.setting(),
        },
        "config": config.to_dict(),
        "image_size": list(image_size),
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "inference": inference,
        "ratios": ratios,
    }
    del fns, candidates, backbone, baseline
    if per_module:
        result["per_module"] = per_module_report(model, images[:1], repeats, warmup, per_module)
    del model

    if train:
        batch = train_batch_size or batch_size
        train_images = torch.randn(batch, 3, *image_size, device=device)
        labels = _random_labels(batch, image_size, config.model_args["num_classes"], device)
        steps = {
            aux: _train_fn(
                _seeded(lambda aux=aux: config.build(aux=aux), device).train(),
                config,
                train_images,
                labels,
                bf16,
                compile_,
            )
            for aux in TRAIN_AUX
        }
        training = _measure(steps, repeats, warmup, device, batch)
        result["training"] = {"batch_size": batch, **training}
        ratios["train_vcr_vs_deep_supervision"] = (
            training["vcr"]["median_ms"] / training["deep_supervision"]["median_ms"]
        )
    result["environment"]["load_average_end"] = list(os.getloadavg())
    return result


_HEADER = f"{'median ms':>11}{'p90 ms':>10}{'img/s':>9}"


def format_report(result: dict[str, Any]) -> str:
    """Plain-text tables of a :func:`run_benchmark` result."""
    env, cfg = result["environment"], result["config"]
    height, width = result["image_size"]
    lines = [
        f"{cfg['backbone']} {height}x{width}, batch {result['batch_size']}, aux={cfg['aux']} "
        f"upsampler={cfg['upsampler']} hiclr_depth={cfg['hiclr_depth']} decoder={cfg['decoder']} "
        f"decoder_dim={cfg['decoder_dim']} pyramid_dim={cfg['pyramid_dim']} (None: the preset's)",
        f"{env['device']} ({env['device_name']}), {env['threads']} threads, torch {env['torch']}, "
        f"bf16={env['bf16']} compile={env['compile']}, malloc {env.get('malloc', '?')}, "
        f"load {env['load_average_start'][0]:.2f}"
        f"->{env['load_average_end'][0]:.2f}, {result['repeats']} repeats after {result['warmup']} warm-up",
        "",
        f"{'inference':<18}{_HEADER}{'x backbone':>12}{'GMACs':>10}{'peak MiB':>10}",
    ]
    base = result["inference"]["backbone"]["median_ms"]
    for name, row in result["inference"].items():
        lines.append(
            f"{name:<18}{row['median_ms']:>11.2f}{row['p90_ms']:>10.2f}{row['images_per_s']:>9.2f}"
            f"{row['median_ms'] / base:>12.3f}{row['gmacs']:>10.2f}{row['peak_mem_mb']:>10.1f}"
        )
    if "training" in result:
        train = result["training"]
        lines += ["", f"{'training step':<18}{_HEADER}{'x DS':>12}{'':>10}{'peak MiB':>10}"]
        ds = train["deep_supervision"]["median_ms"]
        for name in TRAIN_AUX:
            row = train[name]
            lines.append(
                f"{name:<18}{row['median_ms']:>11.2f}{row['p90_ms']:>10.2f}{row['images_per_s']:>9.2f}"
                f"{row['median_ms'] / ds:>12.3f}{'':>10}{row['peak_mem_mb']:>10.1f}"
            )
    if "per_module" in result:
        lines += ["", f"{'module (exclusive)':<28}{'ms':>9}{'GMACs':>9}{'GMAC/s':>9}"]
        for name, row in result["per_module"].items():
            rate = row["gmacs"] / row["ms"] * 1e3 if row["ms"] else 0.0
            lines.append(f"{name:<28}{row['ms']:>9.2f}{row['gmacs']:>9.3f}{rate:>9.1f}")
    lines.append(f"peak memory: {env['memory_method']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vpnext benchmark``.

    Args:
        argv: Arguments after ``benchmark``.

    Returns:
        Exit code (2 for a bad option or config).
    """
    parser = config_parser(
        "vpnext benchmark", "Inference latency and training-step time of a configured VPNeXt."
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (median and p90 over them)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per candidate first")
    parser.add_argument("--train-batch-size", type=int, help="images per training step (default: batch)")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=["cpu", "cuda"], default=default_device)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--bf16", action="store_true", help="autocast forward passes to bfloat16")
    parser.add_argument("--compile", action="store_true", help="torch.compile every candidate (slow on CPU)")
    parser.add_argument(
        "--peers",
        nargs="*",
        choices=list(PEERS),
        metavar="ROW",
        help="instead: VPNeXt beside other decoders on the same ViT (inference; all rows, or these: "
        f"{', '.join(PEERS)}); smp and transformers rows need pip install 'vpnext[peers]'",
    )
    parser.add_argument("--no-train", action="store_true", help="skip the training-step comparison")
    parser.add_argument(
        "--per-module",
        nargs="?",
        type=int,
        const=2,
        default=0,
        metavar="DEPTH",
        help="also time and count MACs per decoder module, down to DEPTH name levels (default 2)",
    )
    args, overrides = parser.parse_known_args(list(argv) if argv is not None else None)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be ≥ 1 and --warmup ≥ 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    try:
        config = load_model_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    image_size = tuple(args.image_size) if args.image_size else config.image_size
    if args.peers is not None:
        result = run_peers(
            config, image_size, args.peers, args.batch_size, args.repeats, args.warmup, args.device
        )
        print(format_peers(result))
    else:
        result = run_benchmark(
            config,
            image_size,
            batch_size=args.batch_size,
            repeats=args.repeats,
            warmup=args.warmup,
            device=args.device,
            bf16=args.bf16,
            compile_=args.compile,
            train=not args.no_train,
            train_batch_size=args.train_batch_size,
            per_module=args.per_module,
        )
        print(format_report(result))
    for note in config.notes:
        print(f"note: {note}")
    if args.json:
        write_json(args.json, result)
    return 0
