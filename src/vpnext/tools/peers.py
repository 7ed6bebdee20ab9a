"""``vpnext benchmark --peers``: VPNeXt beside other decoders for a plain ViT, in one timed run.

A user choosing a decoder for a plain ViT compares it with what the libraries they already use
offer. Every row here is built on the configured timm ViT (same name, image size, classes, random
weights), run in eval mode on the same batch, timed in interleaved rounds with the backbone alone
(:func:`~vpnext.tools.timing.time_interleaved`), and reported with its GMACs (one image), its
parameters and the tensor memory one call holds. Each row returns per-class scores at the input
resolution, so every row pays the same final resize.

Rows (name: what is built):

- ``vpnext``, ``vpnext_paper``: the configured VPNeXt with ``decoder='efficient'`` / ``'paper'``.
- ``segmenter``, ``mask2former``: our Segmenter-style mask decoder and our Mask2Former on ViTDet's
  simple pyramid (``head='mask_transformer'`` / ``'mask2former'``, ``upsampler='bilinear'``,
  no auxiliary head: they cost nothing at inference).
- ``smp_upernet``, ``smp_segformer``: ``segmentation-models-pytorch``'s ``UPerNetDecoder`` and
  ``SegformerDecoder`` (the all-MLP head) with their default widths (256), on four ViT blocks
  (evenly spaced, the last included: 2, 5, 8, 11 of 12) turned into maps at 1/4, 1/8, 1/16 and
  1/32 by mmsegmentation's ``MultiLevelNeck`` arrangement for ViT + UPerNet (1x1 lateral conv at
  the ViT width, bilinear rescale by 4, 2, 1, 0.5, 3x3 conv). smp's own model classes refuse a
  ViT encoder ("unsupported downsampling pattern"), so the neck is ours and the decoders are
  theirs.
- ``smp_dpt``: ``segmentation_models_pytorch.DPT`` with ``encoder_name='tu-<backbone>'``: smp
  builds the same timm ViT itself; its decoder widths are smp's defaults (256, 512, 1024, 1024,
  fusion 256).
- ``hf_eomt``: Hugging Face ``transformers``' ``EomtForUniversalSegmentation`` at the ViT's
  width, depth, heads, MLP width and patch size, with the library's other defaults (200 queries,
  4 registers, masked-attention in the last 4 blocks). EoMT is its own ViT (DINOv2-style, with
  register tokens and layer scale), not the timm module; its semantic output is Mask2Former's
  combination (softmax over classes without "no object" times mask sigmoid), resized to the input.
  EoMT needs a square input.

``smp`` and ``transformers`` come with the optional extra ``pip install 'vpnext[peers]'``; rows
whose library is missing, and rows that cannot be built on the configured backbone (EoMT needs a
plain-MLP ViT; smp's DPT a ViT its encoder knows), are listed as skipped with the reason, and the
others still run.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpnext.models import VPNeXt
from vpnext.models.layers import pad_to_multiple
from vpnext.models.macs import count_macs
from vpnext.tools.model_config import ModelConfig
from vpnext.tools.timing import inference_call, memory_method, peak_memory_mb, summarize, time_interleaved
from vpnext.training.results import device_name

__all__ = [
    "PEERS",
    "BackboneOnly",
    "EoMTPeer",
    "Peer",
    "SmpDecoderPeer",
    "ViTMultiLevel",
    "format_peers",
    "run_peers",
]

_NECK_SCALES = (4.0, 2.0, 1.0, 0.5)


def _vit(name: str, image_size: tuple[int, int]) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size)


def _block_indices(depth: int, count: int = 4) -> list[int]:
    """``count`` evenly spaced block indices ending with the last: 2, 5, 8, 11 for 12 blocks."""
    return [depth * (i + 1) // count - 1 for i in range(count)]


class ViTMultiLevel(nn.Module):
    """Maps at 1/4, 1/8, 1/16 and 1/32 from four blocks of a timm ViT (mmseg's MultiLevelNeck).

    Args:
        backbone: timm ViT name.
        image_size: Input ``(height, width)``.
    """

    def __init__(self, backbone: str, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.vit = _vit(backbone, image_size)
        self.indices = _block_indices(len(self.vit.blocks))
        self.dim = self.vit.embed_dim
        self.lateral = nn.ModuleList(nn.Conv2d(self.dim, self.dim, 1) for _ in _NECK_SCALES)
        self.convs = nn.ModuleList(nn.Conv2d(self.dim, self.dim, 3, padding=1) for _ in _NECK_SCALES)

    def forward(self, images: Tensor) -> list[Tensor]:
        maps = self.vit.forward_intermediates(images, indices=self.indices, intermediates_only=True)
        levels = []
        for x, lateral, conv, scale in zip(maps, self.lateral, self.convs, _NECK_SCALES, strict=True):
            x = lateral(x)
            if scale != 1:
                x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            levels.append(conv(x))
        return levels


class SmpDecoderPeer(nn.Module):
    """An smp decoder (``upernet`` or ``segformer``) on :class:`ViTMultiLevel`, logits at full size."""

    def __init__(self, decoder: str, backbone: str, image_size: tuple[int, int], num_classes: int) -> None:
        super().__init__()
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.decoders.segformer.decoder import SegformerDecoder
        from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

        self.neck = ViTMultiLevel(backbone, image_size)
        # smp's feature lists start at 1/1 and 1/2; an empty 1/2 entry tells SegFormer to skip it.
        channels = [3, 0, *(self.neck.dim,) * len(_NECK_SCALES)]
        if decoder == "upernet":
            self.decoder: nn.Module = UPerNetDecoder(channels, encoder_depth=5)
        elif decoder == "segformer":
            self.decoder = SegformerDecoder(channels, encoder_depth=5)
        else:
            raise ValueError(f"unknown smp decoder {decoder!r}")
        self.head = SegmentationHead(256, num_classes, kernel_size=1, upsampling=4)

    def forward(self, images: Tensor) -> Tensor:
        half = images.new_empty(images.shape[0], 0, images.shape[2] // 2, images.shape[3] // 2)
        return self.head(self.decoder([images, half, *self.neck(images)]))


def _smp_dpt(backbone: str, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.DPT(f"tu-{backbone}", encoder_weights=None, classes=num_classes, img_size=image_size)


class EoMTPeer(nn.Module):
    """Hugging Face EoMT at the ViT's shape; semantic scores at the input size."""

    def __init__(self, backbone: str, image_size: tuple[int, int], num_classes: int) -> None:
        super().__init__()
        from transformers import EomtConfig, EomtForUniversalSegmentation

        if image_size[0] != image_size[1]:
            raise ValueError(f"EoMT needs a square input, got {image_size[0]}x{image_size[1]}")
        with torch.device("meta"):  # only its shape is read
            vit = timm.create_model(backbone, pretrained=False, num_classes=0)
        block = vit.blocks[0]
        if not hasattr(block.mlp, "fc1"):
            raise ValueError(f"EoMT's config takes a plain MLP; {backbone}'s is a {type(block.mlp).__name__}")
        config = EomtConfig(
            hidden_size=vit.embed_dim,
            num_hidden_layers=len(vit.blocks),
            num_attention_heads=block.attn.num_heads,
            intermediate_size=block.mlp.fc1.out_features,
            patch_size=vit.patch_embed.patch_size[0],
            image_size=image_size[0],
            num_labels=num_classes,
        )
        self.model = EomtForUniversalSegmentation(config)

    def forward(self, images: Tensor) -> Tensor:
        out = self.model(pixel_values=images)
        classes = out.class_queries_logits.softmax(-1)[..., :-1]
        masks = out.masks_queries_logits.sigmoid()
        scores = torch.einsum("bqc,bqhw->bchw", classes, masks)
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)


class BackboneOnly(nn.Module):
    """The ViT of a VPNeXt alone: ``backbone(patch_proj(x))`` (patch embed, blocks, final norm)."""

    def __init__(self, model: VPNeXt) -> None:
        super().__init__()
        self.backbone = model.backbone

    def forward(self, images: Tensor) -> Tensor:
        x = pad_to_multiple(images, self.backbone.patch_size)
        return self.backbone(self.backbone.patch_proj(x))[1]


@dataclass(frozen=True)
class Peer:
    """One row of the table: the library it needs (``None``: vpnext's own), the label printed in
    the table's source column, and how it is built from the configuration and the image size."""

    library: str | None
    source: str
    build: Callable[[ModelConfig, tuple[int, int]], nn.Module]


def _ours(**switches: str) -> Callable[[ModelConfig, tuple[int, int]], nn.Module]:
    return lambda config, image_size: config.build(**switches)


def _args(config: ModelConfig, image_size: tuple[int, int]) -> tuple[str, tuple[int, int], int]:
    """What a library row is built from: the timm ViT's name, the image size, the classes."""
    return config.model_args["backbone"], image_size, config.model_args["num_classes"]


_SMP = "segmentation_models_pytorch"

#: Every row of ``vpnext benchmark --peers``, in the order of the table.
PEERS: dict[str, Peer] = {
    "backbone": Peer(None, "timm ViT alone", lambda c, size: BackboneOnly(c.build(decoder="efficient"))),
    "vpnext": Peer(None, "vpnext, efficient", _ours(decoder="efficient")),
    "vpnext_paper": Peer(None, "vpnext, paper width", _ours(decoder="paper")),
    "segmenter": Peer(
        None, "vpnext (Segmenter)", _ours(head="mask_transformer", upsampler="bilinear", aux="none")
    ),
    "mask2former": Peer(
        None, "vpnext (Mask2Former)", _ours(head="mask2former", upsampler="bilinear", aux="none")
    ),
    "smp_upernet": Peer(
        _SMP, "smp UPerNetDecoder", lambda c, size: SmpDecoderPeer("upernet", *_args(c, size))
    ),
    "smp_segformer": Peer(
        _SMP, "smp SegformerDecoder", lambda c, size: SmpDecoderPeer("segformer", *_args(c, size))
    ),
    "smp_dpt": Peer(_SMP, "smp DPT", lambda c, size: _smp_dpt(*_args(c, size))),
    "hf_eomt": Peer("transformers", "transformers EoMT", lambda c, size: EoMTPeer(*_args(c, size))),
}


def build_peer(name: str, config: ModelConfig, image_size: tuple[int, int]) -> nn.Module:
    """Build row ``name`` of :data:`PEERS` for ``config``'s backbone and classes (seed 0, eval)."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    torch.manual_seed(0)
    return PEERS[name].build(config, image_size).eval()


def missing_library(name: str) -> str | None:
    """The library row ``name`` needs and that is not installed, else ``None``."""
    library = PEERS[name].library
    return library if library and importlib.util.find_spec(library) is None else None


def run_peers(
    config: ModelConfig,
    image_size: tuple[int, int],
    rows: list[str] | None = None,
    batch_size: int = 1,
    repeats: int = 10,
    warmup: int = 2,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Time every row of :data:`PEERS` (or ``rows``) in interleaved rounds; count MACs and params.

    Returns:
        ``environment``, ``image_size``, ``rows`` (per row: source, median/p90 ms, images/s,
        ``x_backbone``, GMACs, params in millions, peak MiB) and ``skipped`` (row -> why: a missing
        library, or the error that building it on this backbone raised).
    """
    device = torch.device(device)
    rows = list(rows or PEERS)
    skipped = {
        name: f"{lib} is not installed (pip install 'vpnext[peers]')"
        for name in rows
        if (lib := missing_library(name))
    }
    models = {}
    for name in rows:
        if name in skipped:
            continue
        try:
            models[name] = build_peer(name, config, image_size).to(device)
        except (ValueError, TypeError, AttributeError, RuntimeError) as err:
            if PEERS[name].library is None:  # our own rows must build
                raise
            skipped[name] = f"cannot be built on {config.model_args['backbone']}: {err}"
    images = torch.randn(batch_size, 3, *image_size, device=device)

    fns = {name: inference_call(model, images) for name, model in models.items()}
    times = time_interleaved(fns, repeats, warmup, device)
    result_rows = {}
    for name, model in models.items():
        result_rows[name] = {
            "source": PEERS[name].source,
            **summarize(times[name], batch_size),
            "gmacs": count_macs(model, images[:1]).macs / 1e9,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "peak_mem_mb": peak_memory_mb(fns[name], device),
        }
    if "backbone" in result_rows:
        base = result_rows["backbone"]["median_ms"]
        for row in result_rows.values():
            row["x_backbone"] = row["median_ms"] / base
    return {
        "environment": {
            "device": device.type,
            "device_name": device_name(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average": list(os.getloadavg()),
            "memory_method": memory_method(device),
        },
        "backbone": config.model_args["backbone"],
        "num_classes": config.model_args["num_classes"],
        "image_size": list(image_size),
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "rows": result_rows,
        "skipped": skipped,
    }


def format_peers(result: dict[str, Any]) -> str:
    """Plain-text table of a :func:`run_peers` result."""
    env = result["environment"]
    height, width = result["image_size"]
    lines = [
        f"{result['backbone']} {height}x{width}, {result['num_classes']} classes, "
        f"batch {result['batch_size']}, "
        f"{env['device']} ({env['device_name']}), {env['threads']} threads, torch {env['torch']}, "
        f"{result['repeats']} interleaved rounds after {result['warmup']} warm-up",
        "",
        f"{'row':<15}{'source':<24}{'median ms':>10}{'p90 ms':>9}{'x backbone':>11}"
        f"{'GMACs':>9}{'params M':>10}{'peak MiB':>10}",
    ]
    for name, row in result["rows"].items():
        ratio = f"{row['x_backbone']:.2f}" if "x_backbone" in row else "-"
        lines.append(
            f"{name:<15}{row['source']:<24}{row['median_ms']:>10.1f}{row['p90_ms']:>9.1f}{ratio:>11}"
            f"{row['gmacs']:>9.2f}{row['params_m']:>10.2f}{row['peak_mem_mb']:>10.1f}"
        )
    for name, reason in result["skipped"].items():
        lines.append(f"{name:<15}skipped: {reason}")
    lines.append(f"peak memory: {env['memory_method']}")
    return "\n".join(lines)
