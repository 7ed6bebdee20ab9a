"""Mask2Former-style head: Table III's "mask decoder with pyramid" baseline (``head='mask2former'``).

Mask2Former (Cheng et al., CVPR 2022) on the plain ViT's final map, with the pyramid ViTDet builds
from it (:mod:`vpnext.models.pixel_decoder`)::

    [1/4, 1/8, 1/16, 1/32] = SimpleFeaturePyramid(x_z)
    mask features (1/4), [1/32, 1/16, 1/8] = PixelDecoder(pyramid)
    queries -> decoder_layers x (masked cross-attention -> self-attention -> FFN), cycling over
               the levels 1/32, 1/16, 1/8; before each layer every query predicts a class and a
               mask (class head, 3-layer MLP · mask features), and the mask, thresholded at 0.5 on
               the next level's grid, restricts that query's cross-attention to its foreground

which gives ``decoder_layers + 1`` predictions (all trained: :class:`vpnext.losses.SetCriterion`).
Semantic inference combines the last one as Mask2Former does: the mask logits are resized to
the (padded) input, and ``score_k(x) = sum_q softmax(class_q)_k · sigmoid(mask_q(x))`` with the
"no object" class dropped. :meth:`Mask2FormerHead.semantic_logits` returns ``log score``, so the
model still returns logits whose softmax (used by multi-scale testing) is the per-pixel
normalised score and whose argmax is Mask2Former's.

Widths (:func:`vpnext.models.presets.mask2former_widths`): ``efficient`` is Mask2Former's published
configuration (width 256, 8 heads, 100 queries, 9 decoder layers with FFN 2048, 6 pixel-decoder
layers with FFN 1024, 4 points); ``paper`` runs it at the ViT's width, as ViT-Adapter-L's
Mask2Former does (1024 channels throughout, FFNs 4x, heads of 32 channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpnext.models.outputs import SetPrediction
from vpnext.models.pixel_decoder import PixelDecoder, SimpleFeaturePyramid, sine_position_embedding
from vpnext.models.presets import Mask2FormerWidths

__all__ = ["Mask2FormerHead", "MaskedAttentionDecoder", "semantic_scores"]


class _Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (``nn.MultiheadAttention``'s
    arithmetic) on ``F.scaled_dot_product_attention``; ``allowed`` (B*heads or B, 1 or heads, Q, N)
    is True where a query may attend."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        for proj in (self.q, self.k, self.v, self.out):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, allowed: Tensor | None = None) -> Tensor:
        def split(x: Tensor) -> Tensor:
            return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q(query)), split(self.k(key)), split(self.v(value)), allowed
        )
        return self.out(out.transpose(1, 2).flatten(2))


class _DecoderLayer(nn.Module):
    """Masked cross-attention, self-attention, FFN; each residual and post-norm (Mask2Former)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross = _Attention(dim, heads)
        self.self_attn = _Attention(dim, heads)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, pos: Tensor, allowed: Tensor) -> Tensor:
        tgt = self.norms[0](tgt + self.cross(tgt + query_pos, memory + pos, memory, allowed))
        q = tgt + query_pos
        tgt = self.norms[1](tgt + self.self_attn(q, q, tgt))
        return self.norms[2](tgt + self.ffn(tgt))


class MaskedAttentionDecoder(nn.Module):
    """Mask2Former's transformer decoder with masked attention.

    Args:
        dim: Width of the queries, of the levels and of the mask features.
        num_classes: Classes K (the class head predicts K + 1 with "no object").
        queries: Learnable queries.
        num_layers: Decoder layers (they cycle over the levels).
        heads: Attention heads.
        ffn_dim: Hidden width of the FFN.
        levels: Levels the layers cycle over.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        queries: int = 100,
        num_layers: int = 9,
        heads: int = 8,
        ffn_dim: int = 2048,
        levels: int = 3,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.query_feat = nn.Parameter(torch.empty(queries, dim))
        self.query_pos = nn.Parameter(torch.empty(queries, dim))
        self.level_embed = nn.Parameter(torch.empty(levels, dim))
        for embedding in (self.query_feat, self.query_pos, self.level_embed):
            nn.init.normal_(embedding)  # nn.Embedding's initialisation, as Mask2Former's embeddings
        self.layers = nn.ModuleList(_DecoderLayer(dim, heads, ffn_dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim)
        )

    def _predict(
        self, tgt: Tensor, mask_features: Tensor, next_size: tuple[int, int]
    ) -> tuple[SetPrediction, Tensor]:
        """The prediction of the current queries and the attention mask for the next layer."""
        out = self.norm(tgt)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(out), mask_features)
        # A query attends where its own mask, on the next level's grid, is at least 0.5; a query
        # whose mask is empty there attends everywhere. No gradient through the mask.
        with torch.no_grad():
            resized = F.interpolate(masks, size=next_size, mode="bilinear", align_corners=False)
            allowed = resized.flatten(2) >= 0.0  # sigmoid(x) >= 0.5
            allowed = allowed | ~allowed.any(-1, keepdim=True)
        return SetPrediction(self.class_embed(out), masks), allowed.unsqueeze(1)

    def forward(self, levels: list[Tensor], mask_features: Tensor) -> list[SetPrediction]:
        """Predictions of the queries before the first layer and after each layer.

        Args:
            levels: Refined levels [1/32, 1/16, 1/8], each (B, dim, h, w).
            mask_features: (B, dim, H/4, W/4).
        """
        batch, dim = mask_features.shape[:2]
        sizes = [tuple(f.shape[-2:]) for f in levels]  # not int(): traces stay symbolic
        memories = [f.flatten(2).transpose(1, 2) + self.level_embed[i] for i, f in enumerate(levels)]
        positions = [sine_position_embedding(f, dim).flatten(1).T for f in levels]
        # Copies, not expanded views: a view of a parameter made under no_grad still "requires grad"
        # without a graph, which module hooks (MAC counting) cannot handle.
        tgt = self.query_feat.repeat(batch, 1, 1)
        query_pos = self.query_pos.repeat(batch, 1, 1)
        prediction, allowed = self._predict(tgt, mask_features, sizes[0])
        predictions = [prediction]
        for i, layer in enumerate(self.layers):
            level = i % len(levels)
            tgt = layer(tgt, query_pos, memories[level], positions[level], allowed)
            prediction, allowed = self._predict(tgt, mask_features, sizes[(i + 1) % len(levels)])
            predictions.append(prediction)
        return predictions


def semantic_scores(prediction: SetPrediction, size: tuple[int, int]) -> Tensor:
    """Mask2Former's semantic inference: (B, K, *size) ``sum_q softmax(class_q)[:K] sigmoid(mask_q)``,
    the mask logits bilinearly resized to ``size`` first."""
    masks = F.interpolate(prediction.mask_logits, size=size, mode="bilinear", align_corners=False).sigmoid()
    probs = prediction.class_logits.softmax(-1)[..., :-1]
    return torch.einsum("bqk,bqhw->bkhw", probs, masks)


class Mask2FormerHead(nn.Module):
    """Simple feature pyramid + pixel decoder + masked-attention decoder on the final ViT map.

    Args:
        in_dim: ViT width C.
        num_classes: Classes K.
        widths: The head's widths and depths (:func:`vpnext.models.presets.mask2former_widths`).
    """

    #: Smallest score whose log :meth:`semantic_logits` returns (scores lie in [0, queries]).
    MIN_SCORE = 1e-6

    def __init__(self, in_dim: int, num_classes: int, widths: Mask2FormerWidths) -> None:
        super().__init__()
        w = widths
        self.pyramid = SimpleFeaturePyramid(in_dim, w.dim)
        self.pixel_decoder = PixelDecoder(w.dim, w.heads, w.points, w.encoder_ffn, w.encoder_layers)
        self.decoder = MaskedAttentionDecoder(
            w.dim, num_classes, w.queries, w.decoder_layers, w.heads, w.decoder_ffn, PixelDecoder.LEVELS
        )

    def forward(self, x: Tensor) -> list[SetPrediction]:
        """Every decoder layer's prediction from the final ViT map ``x`` (B, C, h, w)."""
        mask_features, levels = self.pixel_decoder(self.pyramid(x))
        return self.decoder(levels, mask_features)

    def semantic_logits(self, prediction: SetPrediction, size: tuple[int, int]) -> Tensor:
        """``log`` of :func:`semantic_scores` (floored at :attr:`MIN_SCORE`): (B, K, *size)."""
        return semantic_scores(prediction, size).clamp_min(self.MIN_SCORE).log()

    def no_weight_decay(self) -> set[str]:
        """The learnable embeddings, which Mask2Former trains without weight decay."""
        return {"decoder.query_feat", "decoder.query_pos", "decoder.level_embed", "pixel_decoder.level_embed"}
