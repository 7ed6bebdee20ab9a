"""Initialisations of a random-init plain ViT that are not timm's own.

``mimetic`` is the mimetic initialisation of self-attention (Trockman & Kolter, ICML 2023,
"Mimetic Initialization of Self-Attention Layers"): in ImageNet-trained ViTs the product of each
head's query and key weights is close to a positive multiple of the identity, and the product of
the value and output-projection weights close to a negative one. Drawing a random-init ViT's
attention weights so that those products already look like that makes each head start by
attending to tokens that resemble the query (in content and position) and lets a ViT trained from
scratch on a small dataset learn faster and generalise better (their CIFAR-10 and ImageNet gains).

With ``x`` the (pre-norm) token rows, timm computes a head's logits as ``(x Wq_h^T)(x Wk_h^T)^T``,
so the (d, d) product that should look like ``alpha1 Z1 + beta1 I`` is ``Wq_h^T Wk_h``; the value
and output path is ``x Wv^T Wo^T`` summed over heads, so ``Wv^T Wo^T`` should look like
``alpha2 Z2 - beta2 I``. Each target is factorised by an SVD, ``U S V^T``: ``Wq_h^T = U_k S_k^1/2``
and ``Wk_h^T = V_k S_k^1/2`` over its top ``k`` (head width) singular directions; ``Wv^T =
U S^1/2`` and ``Wo^T = S^1/2 V^T`` in full. ``Z`` has entries of variance ``1/d``. Biases, the
MLPs, norms and embeddings keep timm's initialisation.

The constants are the paper's for ViTs (alpha1 = beta1 = 0.7, alpha2 = beta2 = 0.4).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

#: How a random-init backbone's weights are drawn: timm's initialisation, or mimetic attention.
BackboneInit = Literal["timm", "mimetic"]

QK_ALPHA, QK_BETA = 0.7, 0.7
VO_ALPHA, VO_BETA = 0.4, 0.4


@torch.no_grad()
def mimetic_init_(vit: nn.Module) -> None:
    """Redraw the query/key/value/projection weights of every block of ``vit`` in place.

    Draws from torch's global generator (seeded by ``seed_everything``), so a seed gives one
    initialisation.

    Args:
        vit: A timm ``VisionTransformer`` or ``Eva`` whose blocks hold an ``attn`` with a fused
            ``qkv`` linear layer, ``proj`` and ``num_heads``.

    Raises:
        ValueError: a block whose attention does not have that layout.
    """
    for index, block in enumerate(vit.blocks):
        attn = block.attn
        qkv, proj = getattr(attn, "qkv", None), getattr(attn, "proj", None)
        if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear):
            raise ValueError(
                f"backbone_init='mimetic' needs attention with a fused qkv projection; block {index} "
                f"is a {type(attn).__name__}"
            )
        dim, heads = qkv.in_features, attn.num_heads
        if qkv.out_features != 3 * dim or proj.in_features != dim or dim % heads:
            raise ValueError(f"backbone_init='mimetic': block {index} has an attention of another width")
        head_dim = dim // heads
        query, key, value = qkv.weight.view(3, dim, dim).unbind(0)
        for h in range(heads):
            left, right = _factors(dim, QK_ALPHA, QK_BETA, rank=head_dim)
            rows = slice(h * head_dim, (h + 1) * head_dim)
            query[rows].copy_(left.T)
            key[rows].copy_(right.T)
        left, right = _factors(dim, VO_ALPHA, -VO_BETA, rank=dim)
        value.copy_(left.T)
        proj.weight.copy_(right)


def _factors(dim: int, alpha: float, beta: float, rank: int) -> tuple[Tensor, Tensor]:
    """``(L, R)``, both (dim, rank), with ``L R^T`` the best rank-``rank`` fit of ``alpha Z + beta I``."""
    noise = alpha * torch.randn(dim, dim, dtype=torch.float64) / dim**0.5
    u, s, vh = torch.linalg.svd(noise + beta * torch.eye(dim, dtype=torch.float64))
    root = s[:rank].sqrt()
    return u[:, :rank] * root, vh[:rank].T * root  # float64: copy_ rounds them to the weights' dtype
