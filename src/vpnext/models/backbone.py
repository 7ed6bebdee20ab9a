"""Plain-ViT backbone wrapper around timm (paper Sec. IV; DESIGN.md 1.1).

The wrapper owns a timm :class:`~timm.models.vision_transformer.VisionTransformer` (ViT, DeiT,
DINOv2, AugReg...) or :class:`~timm.models.eva.Eva` (EVA-02, DINOv3: rotary position embeddings,
recomputed for each input's token grid) and runs it from *patch tokens* rather than from pixels,
so that VPNeXt can compute the patch embedding once (ViTUp, paper Eq. 5) and hand the stride-16
sub-sampling to the transformer. Intermediate block outputs are collected in the same pass (never
a second backbone run), prefix tokens (class, register, distillation) are dropped, and dense maps
are returned as (B, C, H/16, W/16).

Choices where the paper is silent:
    * ``x_z`` is the last block's output *after* the backbone's final norm; intermediate ``x_i``
      are raw block outputs (timm's ``forward_intermediates(norm=False)`` convention).
    * The model is always created with ``dynamic_img_size=True`` so any padded input size works;
      ``img_size`` only fixes the grid of the learned position embedding.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlparse

import timm
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vpnext.errors import OneLineError
from vpnext.models.init import BackboneInit, mimetic_init_


class PretrainedWeightsError(OneLineError, RuntimeError):
    """Raised when backbone weights cannot be obtained (typically: no network for a hub download)."""


def create_vit(
    name: str,
    pretrained: bool | str | Path = False,
    img_size: int | tuple[int, int] | None = None,
    drop_path_rate: float = 0.0,
    arch_kwargs: dict[str, Any] | None = None,
    init: BackboneInit = "timm",
) -> VisionTransformer | Eva:
    """Create a timm ViT without classifier, optionally loading weights.

    Args:
        name: Any timm ``VisionTransformer`` name (``vit_large_patch16_384``, ``vit_small_patch14_dinov2``…).
        pretrained: ``False`` for random init, ``True`` for timm's hub weights (needs network), or a
            path to a local ``.safetensors``/``.pth``/``.bin`` file; the position embedding is
            resampled to ``img_size`` by timm's checkpoint filter.
        img_size: Image size the position embedding grid is built for (timm default if ``None``).
        drop_path_rate: Stochastic depth rate.
        arch_kwargs: Architecture overrides passed to ``timm.create_model`` (``patch_size``,
            ``depth``, ``embed_dim``, ``num_heads``…), e.g. a ViT-Tiny with 8-pixel patches for CPU
            runs. With pretrained weights only overrides the weights still fit make sense.
        init: How random-init weights are drawn: ``timm`` (timm's own) or ``mimetic`` (attention
            drawn as in mimetic initialisation, :func:`vpnext.models.init.mimetic_init_`); only
            without pretrained weights.

    Raises:
        PretrainedWeightsError: hub weights requested but not downloadable, or a missing local file.
        ValueError: ``name`` is not a plain ViT with a conv patch embedding, an unknown ``init``, or
            an ``init`` other than ``timm`` with pretrained weights.
    """
    if init not in get_args(BackboneInit):
        raise ValueError(f"backbone_init={init!r}: must be one of {', '.join(get_args(BackboneInit))}")
    if init != "timm" and pretrained is not False:
        raise ValueError(
            f"backbone_init={init!r} draws a random-init backbone's weights: with pretrained weights "
            "use 'timm'"
        )
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model '{name}' (see timm.list_models('vit_*'))")
    reserved = {"num_classes", "dynamic_img_size", "drop_path_rate", "img_size", "pretrained"}
    if clash := reserved & set(arch_kwargs or {}):
        raise ValueError(f"backbone_kwargs cannot set {sorted(clash)}: they have arguments of their own")
    kwargs: dict = {
        **(arch_kwargs or {}),
        "num_classes": 0,
        "dynamic_img_size": True,
        "drop_path_rate": drop_path_rate,
    }
    if img_size is not None:
        kwargs["img_size"] = img_size
    if isinstance(pretrained, (str, Path)) and not isinstance(pretrained, bool):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"backbone weights file not found: {path}")
        model = _create(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    elif pretrained:
        try:
            # Without a reachable hub, go straight to the local cache: the hub client would
            # otherwise retry for about a minute before failing.
            with contextlib.nullcontext() if _hub_reachable() else _hub_offline():
                model = _create(name, pretrained=True, **kwargs)
        except ValueError:
            raise
        except Exception as err:  # hub/network errors come in many types
            raise PretrainedWeightsError(
                f"cannot download pretrained weights for '{name}' ({type(err).__name__}); "
                "download them on a machine with network and pass pretrained=/path/to/weights.safetensors"
            ) from None
    else:
        model = _create(name, pretrained=False, **kwargs)
    proj = model.patch_embed.proj
    if not isinstance(proj, nn.Conv2d) or proj.kernel_size != proj.stride:
        raise ValueError(f"'{name}' has no non-overlapping conv patch embedding")
    if init == "mimetic":
        mimetic_init_(model)
    return model


def backbone_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input ``(mean, std)`` (fractions of 1) that backbone ``name``'s weights were trained with.

    Read from the timm model's pretrained config, resolved by timm (``resolve_data_config``), for
    the name as given: ``vit_large_patch16_384`` (AugReg) gives 0.5/0.5, DeiT and DINOv2 give
    ImageNet's 0.485.../0.229...; an explicit tag (``vit_base_patch16_224.mae``) selects that
    weight set's. A random-init backbone uses its architecture's default config the same way, and
    a model with no pretrained config timm's ImageNet default.
    """
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model '{name}' (see timm.list_models('vit_*'))")
    cfg = get_pretrained_cfg(name)
    config = resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg is not None else {})
    return tuple(float(v) for v in config["mean"]), tuple(float(v) for v in config["std"])


#: The timm classes of plain ViTs the backbone runs.
PLAIN_VITS = (VisionTransformer, Eva)


def _create(name: str, **kwargs) -> VisionTransformer | Eva:
    try:
        model = timm.create_model(name, **kwargs)
    except TypeError as err:  # other architectures reject ViT-only kwargs such as dynamic_img_size
        raise ValueError(f"'{name}' is not a timm VisionTransformer or Eva ({err})") from None
    if not isinstance(model, PLAIN_VITS):
        raise ValueError(f"'{name}' is a {type(model).__name__}, not a timm VisionTransformer or Eva")
    return model


def _hub_reachable() -> bool:
    """Whether the Hugging Face hub endpoint resolves (a cheap stand-in for "we have network")."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Make the hub client use its local cache only, for the duration of the block."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


class ViTBackbone(nn.Module):
    """Runs a timm ViT from patch-embedding maps and returns dense intermediate features.

    Args:
        name: timm model name.
        pretrained: ``False``, ``True`` (hub) or a local weights path; see :func:`create_vit`.
        img_size: Position-embedding grid size (timm default if ``None``).
        drop_path_rate: Stochastic depth rate.
        arch_kwargs: timm architecture overrides; see :func:`create_vit`.
        init: ``timm`` or ``mimetic`` initialisation of a random-init backbone; see :func:`create_vit`.
    """

    def __init__(
        self,
        name: str = "vit_tiny_patch16_224",
        pretrained: bool | str | Path = False,
        img_size: int | tuple[int, int] | None = None,
        drop_path_rate: float = 0.0,
        arch_kwargs: dict[str, Any] | None = None,
        init: BackboneInit = "timm",
    ) -> None:
        super().__init__()
        self.vit = create_vit(name, pretrained, img_size, drop_path_rate, arch_kwargs, init)
        self.embed_dim: int = self.vit.embed_dim
        self.depth: int = len(self.vit.blocks)
        self.patch_size: int = self.vit.patch_embed.proj.kernel_size[0]
        self.num_prefix_tokens: int = self.vit.num_prefix_tokens

    @property
    def patch_proj(self) -> nn.Conv2d:
        """The patch-embedding convolution (kernel = stride = patch size)."""
        return self.vit.patch_embed.proj

    def forward(
        self, patch_map: Tensor, indices: Sequence[int] = (), norm_intermediates: bool = False
    ) -> tuple[list[Tensor], Tensor]:
        """Run the transformer on a patch-embedding map.

        Args:
            patch_map: (B, C, h, w) output of the patch-embedding convolution (before its norm).
            indices: 0-based block indices whose outputs to return.
            norm_intermediates: Apply the backbone's final norm to those outputs too.

        Returns:
            ``(features, x_z)``: one (B, C, h, w) map per index in ``indices`` order, and the final
            normalised feature (B, C, h, w).
        """
        vit = self.vit
        b, _, h, w = patch_map.shape
        x = vit.patch_embed.norm(patch_map.permute(0, 2, 3, 1))  # timm applies its norm in NHWC
        if isinstance(vit, Eva):
            # Eva adds the prefix tokens and the absolute embedding (if any) and returns the rotary
            # embedding of this (h, w) grid: one for all blocks, or one per block (``rope_mixed``).
            x, rope = vit._pos_embed(x)
            x = vit.norm_pre(x)
            mixed = getattr(vit, "rope_mixed", False) and rope is not None
            ropes = [rope[i] if mixed else rope for i in range(self.depth)]
        else:
            x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))
            ropes = None
        wanted = {i: pos for pos, i in enumerate(indices)}
        features: list[Tensor | None] = [None] * len(indices)
        for i, block in enumerate(vit.blocks):
            x = block(x) if ropes is None else block(x, rope=ropes[i])
            if i in wanted:
                features[wanted[i]] = self._to_map(vit.norm(x) if norm_intermediates else x, h, w)
        return features, self._to_map(vit.norm(x), h, w)  # type: ignore[return-value]

    def _to_map(self, tokens: Tensor, h: int, w: int) -> Tensor:
        tokens = tokens[:, self.num_prefix_tokens :]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) that must not be weight-decayed."""
        return {f"vit.{n}" for n in self.vit.no_weight_decay()}
