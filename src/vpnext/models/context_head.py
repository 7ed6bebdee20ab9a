"""Context head: local (deformable 3x3) and global (dot-product affinity) context (DESIGN.md 1.3).

The main decoding branch of VPNeXt on the final ViT feature ``x_z``::

    f_z     = proj(x_z)                              1x1 conv to D
    sigma_z = offset_conv(f_z)                       3x3, zero-initialised
    g_z     = GELU(GN(DeformConv3x3(f_z, sigma_z)))  local context (paper Eq. 2 with i = z)
    Lambda_z = softmax(Q(g_z) K(g_z)^T / sqrt(d))    multi-head affinity over the 1/16 grid
    y_z     = g_z + O(Lambda_z V(g_z))               global context (paper Eq. 3 with i = z)
    y_z     = convs(y_z)                             ``head_convs`` 3x3 ConvNormAct (0 in ``efficient``)

``sigma_z`` and ``Lambda_z`` (held as the query/key pair that defines it) are returned as a
:class:`SpatialContext` so that Visual Context Replay can replay them into intermediate layers.
The attention runs through ``F.scaled_dot_product_attention`` so the affinity matrix is never
materialised; replay re-uses the same (q, k) with other values, which is exactly ``Lambda_z V_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from vpnext.models.layers import ConvNormAct, group_norm, zero_init_offset_conv
from vpnext.ops.deform_conv import DeformConv3x3


@dataclass
class SpatialContext:
    """The final layer's spatial context: deformable offsets and the affinity's query/key.

    Attributes:
        offsets: ``sigma_z``, (B, 18, h, w): per kernel tap (dy, dx), taps row-major.
        query: (B, heads, h*w, d) queries; ``Lambda_z = softmax(query key^T / sqrt(d))``.
        key: (B, heads, h*w, d) keys.
    """

    offsets: Tensor
    query: Tensor
    key: Tensor

    def detach(self) -> SpatialContext:
        """The same context cut from the autograd graph (replay as a fixed prior)."""
        return SpatialContext(self.offsets.detach(), self.query.detach(), self.key.detach())


class ContextAggregation(nn.Module):
    """Eqs. (2)–(3) for one feature map, given offsets and an affinity from elsewhere.

    Holds the parameters a branch owns (``varrho_i`` and ``phi_i`` in the paper): the input
    projection, the deformable conv weights, the value/output projections of the attention, and
    the 3x3 convs that follow it (none in the ``efficient`` preset, two in ``paper``; see
    :mod:`vpnext.models.presets`). The main head and every auxiliary branch get the same stack.

    Args:
        in_dim: Channels of the ViT feature.
        dim: Decoder width D.
        num_heads: Attention heads of the affinity (D must be divisible by it).
        deform_impl: Deformable-conv implementation, see :func:`vpnext.ops.deform_conv3x3`.
        num_convs: 3x3 ConvNormAct layers applied after the global context.
    """

    def __init__(
        self, in_dim: int, dim: int, num_heads: int = 8, deform_impl: str = "auto", num_convs: int = 0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"decoder_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.proj = ConvNormAct(in_dim, dim, 1)
        self.deform = DeformConv3x3(dim, dim, bias=False, impl=deform_impl)
        self.deform_norm = group_norm(dim)
        self.act = nn.GELU()
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.convs = nn.Sequential(*(ConvNormAct(dim, dim, 3) for _ in range(num_convs)))

    def local_context(self, f: Tensor, offsets: Tensor) -> Tensor:
        """Eq. (2): deformable 3x3 aggregation of ``f`` at ``offsets``."""
        return self.act(self.deform_norm(self.deform(f, offsets)))

    def global_context(self, g: Tensor, query: Tensor, key: Tensor) -> Tensor:
        """Eq. (3): ``g + O(softmax(q k^T / sqrt(d)) V(g))`` on the flattened grid, then the 3x3 convs."""
        b, c, h, w = g.shape
        tokens = g.flatten(2).transpose(1, 2)  # (B, N, D)
        v = self.value(tokens).view(b, h * w, self.num_heads, -1).transpose(1, 2)
        attended = F.scaled_dot_product_attention(query, key, v).transpose(1, 2).reshape(b, h * w, c)
        y = g + self.out(attended).transpose(1, 2).reshape(b, c, h, w)
        return self.convs(y)


class ContextHead(nn.Module):
    """Main branch: computes its own offsets and affinity on ``x_z`` (DESIGN.md 1.3).

    Also used, one per intermediate layer, by the deep-supervision baseline.

    Args:
        in_dim: Channels of the ViT feature.
        dim: Decoder width D.
        num_classes: Number of classes K.
        classifier_dim: Channels of the map :meth:`classify` receives (the upsampler's output;
            every upsampler outputs D channels, so by default D).
        num_heads: Attention heads of the affinity.
        deform_impl: Deformable-conv implementation.
        dropout: Dropout before the 1x1 classifier.
        num_convs: 3x3 ConvNormAct layers after the global context.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_classes: int,
        classifier_dim: int | None = None,
        num_heads: int = 8,
        deform_impl: str = "auto",
        dropout: float = 0.1,
        num_convs: int = 0,
    ) -> None:
        super().__init__()
        self.aggregation = ContextAggregation(in_dim, dim, num_heads, deform_impl, num_convs)
        self.offset_conv = zero_init_offset_conv(dim)
        self.query_key = nn.Linear(dim, 2 * dim)
        self.classifier = nn.Sequential(
            nn.Dropout2d(dropout), nn.Conv2d(classifier_dim or dim, num_classes, 1)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, SpatialContext]:
        """Returns ``y_z`` (B, D, h, w) and the spatial context ``(sigma_z, Lambda_z)``."""
        agg = self.aggregation
        f = agg.proj(x)
        offsets = self.offset_conv(f)
        g = agg.local_context(f, offsets)
        b, _, h, w = g.shape
        qk = self.query_key(g.flatten(2).transpose(1, 2)).view(b, h * w, 2, agg.num_heads, -1)
        query, key = qk.permute(2, 0, 3, 1, 4).unbind(0)
        context = SpatialContext(offsets, query, key)
        return agg.global_context(g, query, key), context

    def classify(self, features: Tensor, context: SpatialContext | None = None) -> Tensor:
        """Per-class logits from a decoder feature map (at any resolution)."""
        return self.classifier(features)
