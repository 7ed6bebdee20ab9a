"""Named decoder configurations: ``paper`` (Table III's costs) and ``efficient`` (our CPU-friendly one).

The paper gives no decoder widths, but Table III does give costs (ViT-L/16, 480x480, 59 classes,
GMACs): deep supervision and VCR 356.69, VPNeXt with HiCLR 3 1007.62. The backbone alone is 312.70,
so the 1/16 context head costs ~44 GMACs over 30x30 = 900 positions (~49 M MACs a position) and
ViTUp ~651 GMACs over 120x120 = 14,400 positions at 1/4 (~45 M MACs a position, about five 3x3
convs at width 1,024). ``paper`` runs the whole decoder at the ViT's own width C (1,024 for ViT-L)
and adds the 3x3 convs where the works the paper cites put them:

==================  ==========================================================================
context head        1x1 projection, offsets, deformable 3x3, multi-head affinity (C/64 heads,
                    ViT's head size), then ``head_convs = 2`` 3x3 ConvNormAct (mmseg's FCNHead
                    default, the usual deep-supervision head) — ~13 C² + 18 C² MACs a position
HiCLR               ``pyramid_dim = C``: three deformable 3x3 iterations at C, then a 3x3 fusion of
                    ``[u_T, h]`` (``fuse_kernel = 3``: DeepLabV3+/UperNet's 3x3 decoder convs)
mock pyramid        the same widths (levels at C, 3x3 smoothing)
==================  ==========================================================================

``vpnext flops`` counts this configuration within 5% of every Table III figure (tested; the
measured numbers are in ``docs/model.md``). ``efficient`` keeps the decoder narrow (D = 256 at 1/16,
48 channels at 1/4, DeepLabV3+'s low-level width) so that the full VPNeXt costs ≤ 1.25x deep
supervision; it is the default for CPU work. Whether it loses accuracy against ``paper`` is an
experiment (``docs/results``), not an assumption.

Any width given explicitly to :class:`~vpnext.models.VPNeXt` overrides the preset's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

DecoderPreset = Literal["efficient", "paper"]

#: Attention head size of the paper-width decoder and of Segmenter (its mask transformer uses
#: d_model / 64 heads, the ViT convention).
HEAD_SIZE = 64


@dataclass(frozen=True)
class DecoderWidths:
    """Widths and conv counts of the decoder (every one is a :class:`VPNeXt` argument).

    Attributes:
        decoder_dim: Width D of the 1/16 decoder; also the classifier's input width in every
            upsampler row (Table II rows differ only in the upsampler).
        pyramid_dim: Width of the 1/4 path (ViTUp/HiCLR, mock-pyramid levels).
        num_heads: Heads of the context head's affinity.
        head_convs: 3x3 ConvNormAct layers after the context aggregation, in the main head and in
            every auxiliary branch alike.
        fuse_kernel: Kernel of HiCLR's final fusion of ``[u_T, h]`` (1 or 3).
    """

    decoder_dim: int
    pyramid_dim: int
    num_heads: int
    head_convs: int
    fuse_kernel: int


def decoder_widths(preset: DecoderPreset, embed_dim: int, **overrides: int | None) -> DecoderWidths:
    """The widths of ``preset`` for a ViT of width ``embed_dim``, with non-``None`` overrides applied.

    Raises:
        ValueError: For an unknown preset or an override that is not a field of :class:`DecoderWidths`.
    """
    if preset == "efficient":
        widths = DecoderWidths(decoder_dim=256, pyramid_dim=48, num_heads=8, head_convs=0, fuse_kernel=1)
    elif preset == "paper":
        widths = DecoderWidths(
            decoder_dim=embed_dim,
            pyramid_dim=embed_dim,
            num_heads=max(embed_dim // HEAD_SIZE, 1),
            head_convs=2,
            fuse_kernel=3,
        )
    else:
        raise ValueError(f"decoder={preset!r} is not one of 'efficient', 'paper'")
    return replace(widths, **{k: v for k, v in overrides.items() if v is not None})


def segmenter_width(embed_dim: int, dim: int | None = None, heads: int | None = None) -> tuple[int, int]:
    """Segmenter's published mask-transformer width for a backbone: d = the ViT's width, d/64 heads."""
    dim = dim or embed_dim
    return dim, heads or max(dim // HEAD_SIZE, 1)


@dataclass(frozen=True)
class Mask2FormerWidths:
    """Widths and depths of the Mask2Former-style head (``head='mask2former'``).

    Attributes:
        dim: Width of the pyramid levels, the pixel decoder, the mask features and the queries.
        heads: Attention heads (deformable and masked attention alike).
        encoder_ffn: FFN width of the pixel decoder's deformable-attention layers.
        decoder_ffn: FFN width of the transformer decoder's layers.
        queries: Learnable queries.
        encoder_layers: Deformable-attention layers of the pixel decoder.
        decoder_layers: Masked-attention decoder layers.
        points: Sampling points per head and level of the deformable attention.
    """

    dim: int
    heads: int
    encoder_ffn: int
    decoder_ffn: int
    queries: int = 100
    encoder_layers: int = 6
    decoder_layers: int = 9
    points: int = 4


def mask2former_widths(preset: DecoderPreset, embed_dim: int, dim: int | None = None) -> Mask2FormerWidths:
    """The Mask2Former head of ``preset``: ``efficient`` is Mask2Former's published configuration
    (width 256 whatever the backbone, FFNs 4x in the pixel decoder and 8x in the transformer
    decoder); ``paper`` is ViT-Adapter-L's, everything at the ViT's width with FFNs of 4x (1024,
    FFN 4096 for ViT-L). Heads are 32 channels wide in both. ``dim`` replaces the preset's width
    and scales heads and FFNs with it."""
    if preset == "efficient":
        dim = dim or 256
        return Mask2FormerWidths(dim=dim, heads=max(dim // 32, 1), encoder_ffn=4 * dim, decoder_ffn=8 * dim)
    if preset == "paper":
        dim = dim or embed_dim
        return Mask2FormerWidths(dim=dim, heads=max(dim // 32, 1), encoder_ffn=4 * dim, decoder_ffn=4 * dim)
    raise ValueError(f"decoder={preset!r} is not one of 'efficient', 'paper'")
