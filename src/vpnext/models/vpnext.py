"""VPNeXt: a plain ViT with Visual Context Replay and ViTUp, and every baseline of Tables I–III.

Every ablation switch is a constructor argument; the module for each switch is picked once here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from vpnext.models.backbone import ViTBackbone
from vpnext.models.context_head import ContextHead
from vpnext.models.init import BackboneInit
from vpnext.models.layers import crop_to, pad_to_multiple, upsample_to
from vpnext.models.mask2former import Mask2FormerHead
from vpnext.models.mask_transformer import MaskTransformerHead
from vpnext.models.outputs import VPNeXtOutput
from vpnext.models.presets import DecoderPreset, decoder_widths, mask2former_widths, segmenter_width
from vpnext.models.upsamplers import BilinearUpsampler, MockHiCLR, MockPyramid
from vpnext.models.vcr import DeepSupervision, NaiveAlign, VisualContextReplay
from vpnext.models.vitup import PYRAMID_STRIDE, HiCLR, HiddenPyramidEmbedding
from vpnext.ops.deform_conv import DeformImpl

AuxMode = Literal["none", "deep_supervision", "naive_align", "vcr"]
HeadMode = Literal["context", "mask_transformer", "mask2former"]
UpsamplerMode = Literal["bilinear", "mock_pyramid", "mock_hiclr", "hiclr"]


# The paper's Fig. 4 analyses VCR on the 15th layer of ViT-L (block 14, 0-based) but does not list the
# replayed layers. For 24-block backbones a count picks from the blocks mmsegmentation's SETR
# deep-supervises on ViT-L (9, 14, 19; its ``out_indices`` without the last), so that the Fig. 4 layer
# is always replayed: one layer is block 14, two are 9 and 14, three are 9, 14 and 19.
VIT_L_AUX_LAYERS = {1: [14], 2: [9, 14], 3: [9, 14, 19]}


def resolve_aux_layers(aux_layers: int | Sequence[int], depth: int) -> list[int]:
    """Block indices (0-based) of the supervised intermediate layers.

    A count ``n`` spaces the layers evenly, ``depth·j // (n + 1)`` for j = 1..n (blocks 4 and 8 of a
    12-block ViT for n = 2), except on 24-block backbones, where 1–3 layers follow
    ``VIT_L_AUX_LAYERS`` (they include block 14, the layer of the paper's Fig. 4). Explicit indices
    are taken as given. The last block is ``x_z`` itself and cannot be auxiliary.
    """
    if isinstance(aux_layers, int):
        if not 1 <= aux_layers <= depth - 2:  # depth - 1 layers would space the last onto x_z itself
            raise ValueError(f"aux_layers={aux_layers}: need a count between 1 and {depth - 2}")
        if depth == 24 and aux_layers in VIT_L_AUX_LAYERS:
            return list(VIT_L_AUX_LAYERS[aux_layers])
        return [depth * j // (aux_layers + 1) for j in range(1, aux_layers + 1)]
    indices = list(aux_layers)
    if not indices or len(set(indices)) != len(indices) or not all(0 <= i < depth - 1 for i in indices):
        raise ValueError(f"aux_layers={indices}: need distinct block indices in [0, {depth - 2}]")
    return sorted(indices)


class VPNeXt(nn.Module):
    """VPNeXt semantic segmentation model (and its ablation baselines).

    Two entry points, each with one return type whatever the module's mode:

    * :meth:`predict` (also ``model(images)``): logits (B, K, H, W) at the input resolution for any
      H, W (padded right/bottom to a multiple of the patch size inside, cropped back). Auxiliary
      branches never run: this is the inference model of Table III.
    * :meth:`forward_train`: a :class:`VPNeXtOutput` with the main logits and whatever ``aux``
      needs (auxiliary logits, or the naive-align feature pairs); the losses take it.

    ``train()``/``eval()`` switch dropout and stochastic depth only.

    Args:
        num_classes: Number of classes K.
        backbone: timm ViT name, e.g. ``vit_large_patch16_384``.
        pretrained: ``False`` (random init), ``True`` (timm hub, needs network) or a local weights
            file (``.safetensors``/``.pth``); position embeddings are resampled to ``img_size``.
        img_size: Training crop size (an int or ``(height, width)``) the position-embedding grid is
            built for; the command line links it from the data's training crop.
        drop_path_rate: Stochastic depth of the ViT.
        backbone_kwargs: timm architecture overrides of ``backbone`` (e.g. ``{"patch_size": 8,
            "depth": 6}``); see :func:`vpnext.models.backbone.create_vit`.
        backbone_init: How a random-init backbone's weights are drawn: ``timm`` (timm's own) or
            ``mimetic`` (self-attention drawn so that query-key products start near the identity
            and value-projection products near its negative; :mod:`vpnext.models.init`).
        decoder: Named decoder configuration (:mod:`vpnext.models.presets`): ``efficient``
            (D 256, 48 channels at 1/4; the default) or ``paper`` (the whole decoder at the ViT's
            width with the 3x3 convs that reproduce Table III's costs). The five width arguments
            below default to the preset's value; any one given explicitly overrides it.
        decoder_dim: Width D of the 1/16 decoder (context head, auxiliary branches) and of the
            classifier's input in every upsampler row.
        pyramid_dim: Width of the 1/4 path (mock pyramid levels, ViTUp/HiCLR).
        num_heads: Attention heads of the context head's affinity.
        head_convs: 3x3 ConvNormAct layers after the context aggregation (main head and every
            auxiliary branch alike).
        fuse_kernel: Kernel (1 or 3) of HiCLR's final fusion of ``[u_T, h]``.
        segmenter_dim: Width of the mask transformer (``head='mask_transformer'``); ``None`` is
            Segmenter's published choice, the ViT's own width (1024 for ViT-L).
        segmenter_heads: Heads of the mask transformer; ``None`` is Segmenter's width / 64.
        mask2former_dim: Width of ``head='mask2former'`` (heads and FFNs scale with it); ``None``
            is the ``decoder`` preset's (256 ``efficient``, the ViT's width ``paper``).
        aux: Auxiliary supervision of intermediate layers (training only): ``none``,
            ``deep_supervision``, ``naive_align`` (Eq. 1) or ``vcr`` (Visual Context Replay).
        aux_layers: How many intermediate layers (evenly spaced), or their 0-based block indices.
        head: ``context`` (deformable local + affinity global context), ``mask_transformer``
            (Segmenter, the "mask decoder w/o pyramid" baseline) or ``mask2former`` (Mask2Former on
            a ViTDet simple feature pyramid: the "mask decoder with pyramid" baseline; it brings its
            own pyramid, so ``upsampler`` must be ``bilinear``; widths from ``decoder``, see
            :func:`vpnext.models.presets.mask2former_widths`).
        upsampler: ``bilinear``, ``hiclr`` (ViTUp's real pyramid), ``mock_hiclr`` (HiCLR on a mock
            1/4 feature made from the 1/16 map: Table II's "Mock pyramid" row) or ``mock_pyramid``
            (a ViTDet-style deconvolution + FPN pyramid without HiCLR; Table III's mask-decoder row).
        hiclr_depth: HiCLR refinement iterations T (Table II: 1–5); 0 is the bilinear path
            (``hiclr``); ``mock_hiclr`` needs 1–5.
        replay_stop_grad: VCR replays the final layer's offsets/affinity as a fixed prior
            (stop-gradient). ``False`` lets the auxiliary loss update them too.
        pyramid_embed: How ViTUp computes the stride-4 embedding: ``folded`` (projection folded
            into the patch conv, cheaper) or ``shared`` (full-width map once, sub-sampled).
        deform_impl: Deformable conv kernel: ``auto`` (fastest measured on the device),
            ``embedding_bag``, ``grid_sample`` or ``torchvision`` (same values and gradients).

    Raises:
        ValueError: For ``aux='vcr'`` with a mask-decoder head (nothing to replay), ``head='mask2former'``
            with an upsampler other than ``bilinear``, and out-of-range ``aux_layers``/``hiclr_depth``.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "vit_tiny_patch16_224",
        pretrained: bool | str | Path = False,
        img_size: int | tuple[int, int] | None = None,
        drop_path_rate: float = 0.0,
        backbone_kwargs: dict[str, Any] | None = None,
        backbone_init: BackboneInit = "timm",
        decoder: DecoderPreset = "efficient",
        decoder_dim: int | None = None,
        pyramid_dim: int | None = None,
        num_heads: int | None = None,
        head_convs: int | None = None,
        fuse_kernel: int | None = None,
        segmenter_dim: int | None = None,
        segmenter_heads: int | None = None,
        mask2former_dim: int | None = None,
        aux: AuxMode = "vcr",
        aux_layers: int | list[int] = 2,
        head: HeadMode = "context",
        upsampler: UpsamplerMode = "hiclr",
        hiclr_depth: int = 3,
        replay_stop_grad: bool = True,
        pyramid_embed: Literal["folded", "shared"] = "folded",
        deform_impl: DeformImpl = "auto",
    ) -> None:
        super().__init__()
        _check_choice("aux", aux, AuxMode)
        _check_choice("head", head, HeadMode)
        _check_choice("upsampler", upsampler, UpsamplerMode)
        if aux == "vcr" and head != "context":
            raise ValueError(
                "aux='vcr' needs head='context': VCR replays the context head's deformable offsets and "
                f"affinity, and head={head!r} computes neither"
            )
        if head == "mask2former" and upsampler != "bilinear":
            raise ValueError(
                f"head='mask2former' builds its own pyramid (ViTDet's simple feature pyramid and a pixel "
                f"decoder): set upsampler='bilinear', not {upsampler!r}"
            )
        if not 0 <= hiclr_depth <= 5 and upsampler == "hiclr":
            raise ValueError(f"hiclr_depth={hiclr_depth}: must be between 0 and 5")
        if not 1 <= hiclr_depth <= 5 and upsampler == "mock_hiclr":
            raise ValueError(f"hiclr_depth={hiclr_depth}: upsampler='mock_hiclr' needs 1 to 5 iterations")
        self.num_classes = num_classes
        self.aux_mode = aux
        self.backbone = ViTBackbone(
            backbone, pretrained, img_size, drop_path_rate, backbone_kwargs, backbone_init
        )
        width = self.backbone.embed_dim
        #: The resolved decoder widths (preset + explicit overrides).
        self.widths = decoder_widths(
            decoder,
            width,
            decoder_dim=decoder_dim,
            pyramid_dim=pyramid_dim,
            num_heads=num_heads,
            head_convs=head_convs,
            fuse_kernel=fuse_kernel,
        )
        w = self.widths
        # The mask transformer replaces the context head, at its own (Segmenter's) width.
        head_dim, mask_heads = (
            segmenter_width(width, segmenter_dim, segmenter_heads)
            if head == "mask_transformer"
            else (w.decoder_dim, w.num_heads)
        )

        if upsampler == "hiclr" and hiclr_depth > 0:
            self.pyramid_embed = HiddenPyramidEmbedding(
                width, w.pyramid_dim, self.backbone.patch_size, pyramid_embed
            )
            self.upsampler: nn.Module = HiCLR(
                head_dim, w.pyramid_dim, hiclr_depth, deform_impl, w.fuse_kernel
            )
        else:
            self.pyramid_embed = None
            if upsampler == "mock_hiclr":
                self.upsampler = MockHiCLR(head_dim, w.pyramid_dim, hiclr_depth, deform_impl, w.fuse_kernel)
            elif upsampler == "mock_pyramid":
                self.upsampler = MockPyramid(head_dim, w.pyramid_dim)
            else:
                self.upsampler = BilinearUpsampler(head_dim)
        # Inputs are padded to whole tokens; with the hidden 1/4 map, to a size the 1/4 grid and the
        # token grid both tile exactly (lcm: 16 for patch 16, 28 for patch 14).
        patch = self.backbone.patch_size
        self.pad_multiple = patch if self.pyramid_embed is None else math.lcm(patch, PYRAMID_STRIDE)

        if head == "mask2former":
            self.head: nn.Module = Mask2FormerHead(
                width, num_classes, mask2former_widths(decoder, width, mask2former_dim)
            )
        elif head == "context":
            self.head = ContextHead(
                width,
                head_dim,
                num_classes,
                self.upsampler.out_dim,
                w.num_heads,
                deform_impl,
                num_convs=w.head_convs,
            )
        else:
            self.head = MaskTransformerHead(
                width, head_dim, num_classes, self.upsampler.out_dim, num_heads=mask_heads
            )

        self.aux_layers = [] if aux == "none" else resolve_aux_layers(aux_layers, self.backbone.depth)
        n_aux = len(self.aux_layers)
        if aux == "deep_supervision":
            self.aux: nn.Module | None = DeepSupervision(
                width, w.decoder_dim, num_classes, n_aux, w.num_heads, deform_impl, w.head_convs
            )
        elif aux == "vcr":
            self.aux = VisualContextReplay(
                width,
                w.decoder_dim,
                num_classes,
                n_aux,
                w.num_heads,
                deform_impl,
                replay_stop_grad,
                w.head_convs,
            )
        elif aux == "naive_align":
            self.aux = NaiveAlign()
        else:
            self.aux = None

    def forward(self, images: Tensor) -> Tensor:
        """:meth:`predict`: the logits (B, K, H, W) of ``images`` (B, 3, H, W)."""
        return self.predict(images)

    def predict(self, images: Tensor) -> Tensor:
        """Logits (B, K, H, W) at the input resolution; auxiliary branches do not run."""
        return self._run(images, with_aux=False).logits

    def forward_train(self, images: Tensor) -> VPNeXtOutput:
        """The main logits and the auxiliary outputs ``aux`` trains with (see :class:`VPNeXtOutput`)."""
        return self._run(images, with_aux=self.aux is not None)

    def _run(self, images: Tensor, with_aux: bool) -> VPNeXtOutput:
        height, width = images.shape[-2:]
        x = pad_to_multiple(images, self.pad_multiple)
        if self.pyramid_embed is not None:
            patches, pyramid = self.pyramid_embed(x, self.backbone.patch_proj)
        else:
            patches, pyramid = self.backbone.patch_proj(x), None

        features, x_z = self.backbone(
            patches, self.aux_layers if with_aux else (), norm_intermediates=self.aux_mode == "naive_align"
        )
        padded_size = tuple(x.shape[-2:])  # not int(): export traces keep sizes symbolic
        if isinstance(self.head, Mask2FormerHead):
            sets, context = self.head(x_z), None
            logits = self.head.semantic_logits(sets[-1], padded_size)
            output = VPNeXtOutput(
                crop_to(logits, height, width), set_predictions=sets, padded_size=padded_size
            )
        else:
            y, context = self.head(x_z)
            logits = self.head.classify(self.upsampler(y, pyramid), context)
            output = VPNeXtOutput(crop_to(upsample_to(logits, padded_size), height, width))
        if with_aux:
            aux_logits, output.align_pairs = self.aux(features, x_z, context, padded_size)
            output.aux_logits = [a[..., :height, :width] for a in aux_logits]
        return output

    def no_weight_decay(self) -> set[str]:
        """Names exempt from weight decay besides 1-D tensors: pos/cls/reg tokens, class embeddings."""
        names = {f"backbone.{n}" for n in self.backbone.no_weight_decay()}
        if isinstance(self.head, (MaskTransformerHead, Mask2FormerHead)):
            names |= {f"head.{n}" for n in self.head.no_weight_decay()}
        return names


def _check_choice(name: str, value: str, choices) -> None:
    allowed = choices.__args__
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


#: The constructor arguments of :class:`VPNeXt` (the architecture and the ablation switches), read
#: off its signature: the training module, the checkpoint loader and the tools take them from here.
MODEL_ARGS = tuple(inspect.signature(VPNeXt).parameters)
#: Their defaults (every argument but ``num_classes`` has one).
MODEL_DEFAULTS = {
    name: p.default for name, p in inspect.signature(VPNeXt).parameters.items() if p.default is not p.empty
}
