"""ViTUp: the hidden stride-4 embedding and the HiCLR refiner (paper Sec. IV-B; DESIGN.md 1.2, 1.6).

Part 1, :class:`HiddenPyramidEmbedding` (paper Eq. 5): the ViT's own patch embedding, a conv with
kernel = stride = 16, applied at stride 4 gives a 1/4-resolution map ``e4``. The decoder only
needs ``P·e4`` (a 1x1 projection to the pyramid width); since both maps are linear,
``P·conv(I, W) = conv(I, P·W)``. Two modes:

* ``mode='folded'`` (default): the 1/4 map is computed directly with the folded weights ``P·W``
  (pyramid_dim / C of the full-width stride-4 conv) and the stride-16 tokens by the ViT's own
  conv (16x cheaper). Because the two are separate convs, the 1/4 map can sit on the 1/4 pixel
  grid: it is computed with 6 px of zero padding on every side, so cell j covers pixels
  4j - 6 .. 4j + 9 and is centred on 4j + 1.5 — where the bilinear x4 resizes of ``h`` and of the
  logits, and the labels, put cell j. The 1/4 feature, the upsampled ``h`` and the logits share
  one grid (an impulse test checks it).
  The same holds for any even patch size k: (k - 4) / 2 px of padding centres cell j on 4j + 1.5.
  For patch 14 (DINOv2, EVA-02-L/14) the kernel-14 conv at stride 4 gives the 1/4 map on that
  grid, and the 1/14 tokens (centred on 14i + 6.5) land on it too when ``h`` is resized from 1/14
  to 1/4, as long as the image is padded to a multiple of 28 (both grids then cover the same
  pixels; :class:`~vpnext.models.VPNeXt` pads to ``lcm(patch, 4)``). Tests check both.
* ``mode='shared'``: the paper's literal computation (patch sizes divisible by 4 only). The full-
  width ``e4`` is computed once with 12 px of right/bottom padding and ``e4[..., ::4, ::4]`` is
  bit for bit the stride-16 embedding the ViT consumes. The price: cell j covers pixels 4j .. 4j +
  15, centred on 4j + 7.5, i.e. the 1/4 map is shifted by 6 px (1.5 cells) right and down against
  the grid of ``h``, the logits and the labels; only the deformable offsets can learn it away.
  Exact sub-sampling and an aligned grid cannot both hold (a stride-16 token would sit at a half
  cell of an aligned 1/4 map).

Part 2, :class:`HiCLR` (High-Level Context Local Refiner): ``u_0 = GN(P·e4)``; the high-level
context ``h`` is ``y_z`` projected to the pyramid width and upsampled to 1/4; each of the T
iterations predicts offsets from ``[h, u_{t-1}]`` (zero-initialised 3x3 conv), refines
``u_{t-1}`` with a deformable 3x3 conv at those offsets, and adds the result (residual):
``u_t = u_{t-1} + GELU(GN(Deform(u_{t-1}, offsets_t)))``. The output ``ConvNormAct([u_T, h])``
(kernel ``fuse_kernel``) maps back to the decoder width D and feeds the classifier at 1/4, so the
classifier reads D channels as in every other Table II row. Only local context is refined, as
the paper states.

Choices for cost (measured in docs/benchmarks.md): a 3x3 conv over the concatenation ``[h, u]``
is the sum of a 3x3 conv over ``h`` and one over ``u``; ``h`` is the same in every iteration, so
the ``h`` part of all T offset convs runs as one conv before the loop (same weights and MACs,
one large conv instead of T small ones). The final fusion is 1x1 in the ``efficient`` preset (a
3x3 fusion at 1/4 costs as much as two iterations there) and 3x3 in ``paper``
(DeepLabV3+/UperNet's 3x3 decoder convs; see :mod:`vpnext.models.presets`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpnext.models.layers import ConvNormAct, group_norm, upsample_to, zero_init_offset_conv
from vpnext.ops.deform_conv import DeformConv3x3

PYRAMID_STRIDE = 4


class HiddenPyramidEmbedding(nn.Module):
    """The ViT patch embedding re-applied at stride 4, projected to the pyramid width.

    Args:
        embed_dim: ViT width C (output channels of the patch embedding).
        dim: Pyramid width of the decoder's 1/4 path.
        patch_size: ViT patch size: even and ≥ 4 (``folded``; 14 for DINOv2/EVA-02-L/14), a multiple of 4
            (``shared``). The input must be padded to a multiple of ``lcm(patch_size, 4)``.
        mode: ``'folded'`` (default, cheaper) or ``'shared'`` (full-width map computed once).
    """

    def __init__(
        self, embed_dim: int, dim: int, patch_size: int = 16, mode: Literal["folded", "shared"] = "folded"
    ) -> None:
        super().__init__()
        if mode not in ("folded", "shared"):
            raise ValueError(f"mode must be 'folded' or 'shared', got {mode!r}")
        if mode == "shared" and patch_size % PYRAMID_STRIDE:
            raise ValueError(
                f"pyramid_embed='shared' needs a patch size divisible by {PYRAMID_STRIDE}, got {patch_size} "
                "(its tokens are the stride-4 map sub-sampled; use 'folded')"
            )
        if patch_size < PYRAMID_STRIDE or patch_size % 2:
            raise ValueError(f"ViTUp needs an even patch size of at least {PYRAMID_STRIDE}, got {patch_size}")
        self.mode = mode
        self.patch_size = patch_size
        self.proj = nn.Conv2d(embed_dim, dim, 1)
        self.norm = group_norm(dim)

    def stride4(self, images: Tensor, weight: Tensor, bias: Tensor | None, aligned: bool) -> Tensor:
        """``e4 = theta(I, K16, S4)``, exactly H/4 x W/4.

        ``aligned``: pad (k - 4) / 2 px on every side, so cell j is centred on pixel 4j + 1.5 (the
        1/4 grid of bilinear resizing); else pad k - 4 px right/bottom (cell j centred on 4j + 7.5,
        the stride-16 tokens are ``e4[..., ::4, ::4]``).
        """
        pad = self.patch_size - PYRAMID_STRIDE
        padding = (pad // 2,) * 4 if aligned else (0, pad, 0, pad)
        return F.conv2d(F.pad(images, padding), weight, bias, stride=PYRAMID_STRIDE)

    @property
    def grid_offset(self) -> float:
        """Pixels by which the 1/4 map's cell centres lie right/down of the 1/4 grid (4j + 1.5)."""
        return 0.0 if self.mode == "folded" else (self.patch_size - PYRAMID_STRIDE) / 2

    def folded_weights(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(P·W, P·b + b_P)``: the patch conv and the 1x1 projection merged into one conv."""
        p = self.proj.weight.flatten(1)  # (dim, C)
        folded_w = torch.einsum("dc,cikl->dikl", p, weight)
        folded_b = self.proj.bias if bias is None else p @ bias + self.proj.bias
        return folded_w, folded_b

    def forward(self, images: Tensor, patch_proj: nn.Conv2d) -> tuple[Tensor, Tensor]:
        """Returns the ViT's stride-16 patch map (B, C, H/16, W/16) and ``u_0`` (B, dim, H/4, W/4).

        ``images`` must already be padded to a multiple of the patch size.
        """
        step = self.patch_size // PYRAMID_STRIDE
        if self.mode == "shared":
            e4 = self.stride4(images, patch_proj.weight, patch_proj.bias, aligned=False)
            return e4[..., ::step, ::step], self.norm(self.proj(e4))
        tokens = patch_proj(images)
        pyramid = self.stride4(images, *self.folded_weights(patch_proj.weight, patch_proj.bias), aligned=True)
        return tokens, self.norm(pyramid)


class HiCLRStep(nn.Module):
    """One HiCLR refinement iteration: offsets from ``[h, u]``, deformable 3x3, residual update.

    The offset conv's ``h`` part is computed by :class:`HiCLR` for all iterations at once and
    passed in as ``context_offsets``; this module owns the ``u`` part.
    """

    def __init__(self, dim: int, deform_impl: str = "auto") -> None:
        super().__init__()
        self.offset_conv = zero_init_offset_conv(dim, bias=False)
        self.deform = DeformConv3x3(dim, dim, bias=False, impl=deform_impl)
        self.norm = group_norm(dim)
        self.act = nn.GELU()

    def forward(self, u: Tensor, context_offsets: Tensor) -> Tensor:
        offsets = context_offsets + self.offset_conv(u)
        return u + self.act(self.norm(self.deform(u, offsets)))


class HiCLR(nn.Module):
    """High-Level Context Local Refiner with ``depth`` iterations (Table II: 1–5).

    Args:
        in_dim: Width D of the head's 1/16 features ``y_z`` (and of the output).
        dim: Pyramid width of the 1/4 path (``u_0`` comes from :class:`HiddenPyramidEmbedding`).
        depth: Number of refinement iterations T ≥ 1.
        deform_impl: Deformable-conv implementation.
        fuse_kernel: Kernel (1 or 3) of the ConvNormAct fusing ``[u_T, h]`` into D channels.
    """

    needs_pyramid = True

    def __init__(
        self, in_dim: int, dim: int, depth: int = 3, deform_impl: str = "auto", fuse_kernel: int = 1
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError("HiCLR needs depth ≥ 1 (depth 0 is the bilinear upsampler)")
        if fuse_kernel not in (1, 3):
            raise ValueError(f"fuse_kernel={fuse_kernel}: must be 1 or 3")
        self.out_dim = in_dim
        self.lateral = ConvNormAct(in_dim, dim, 1)
        # The h part of every iteration's offset conv (iteration t: channels 18t .. 18t + 17).
        self.context_offsets = zero_init_offset_conv(dim, num_convs=depth)
        self.steps = nn.ModuleList(HiCLRStep(dim, deform_impl) for _ in range(depth))
        self.fuse = ConvNormAct(2 * dim, in_dim, fuse_kernel)

    def forward(self, y: Tensor, pyramid: Tensor | None) -> Tensor:
        if pyramid is None:
            raise RuntimeError("HiCLR needs the hidden stride-4 pyramid feature")
        h = upsample_to(self.lateral(y), tuple(pyramid.shape[-2:]))
        u = pyramid
        if not torch.is_grad_enabled():
            # Inference runs the loop channels-last, the layout the deformable conv samples from
            # (its native kernel reads the rows in place). Training stays NCHW, so that a training
            # run computes exactly what it did before; the values agree to float rounding.
            u = u.contiguous(memory_format=torch.channels_last)
        for step, context_offsets in zip(
            self.steps, self.context_offsets(h).chunk(len(self.steps), 1), strict=True
        ):
            u = step(u, context_offsets)
        return self.fuse(torch.cat([u.contiguous(), h], 1))
