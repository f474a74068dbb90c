"""Pieces of the ADM / LDM image U-Net that PVDM's triplane U-Net and CMD's content U-Net share.

Their residual block is :class:`vdblocks.ResBlock2d` in its ADM configuration ("Diffusion Models
Beat GANs", Dhariwal & Nichol) with :func:`small_map_groups` as its group rule, built by
:func:`adm_res_block`. :class:`SelfAttention2d` is the U-Net's spatial self-attention over the
pixels of a feature map.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from vdblocks.layers.norm import group_norm
from vdblocks.layers.resblock import ResBlock2d
from vdblocks.layers.transformer import Attention
from vdblocks.validation import check_positive_int

__all__ = ["SelfAttention2d", "adm_res_block", "small_map_groups"]


def small_map_groups(channels: int) -> int:
    """GroupNorm groups: at most 32 (LDM's), with at least two channels per group, so that a map
    downsampled to ``1 x 1`` still has more than one value per group to normalise."""
    return max(1, min(32, channels // 2))


def adm_res_block(in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0) -> ResBlock2d:
    """ADM's res block with the scale-shift norm: ``x (b, c_in, p, q), emb (b, e) -> (b, c_out, p, q)``.

    ``h = conv(SiLU(GN(x))); h = conv(dropout(SiLU(GN(h) (1 + s) + b))); out = shortcut(x) + h``
    with ``[s, b] = Linear(SiLU(emb))`` and a 1x1 shortcut when the widths differ: a
    :class:`vdblocks.ResBlock2d` with ``emb_mode="scale_shift"``, GroupNorm eps ``1e-6`` and
    :func:`small_map_groups` groups.
    """
    return ResBlock2d(
        in_channels,
        out_channels,
        emb_dim=emb_dim,
        emb_mode="scale_shift",
        dropout=dropout,
        norm_groups=small_map_groups,
        eps=1e-6,
    )


class SelfAttention2d(nn.Module):
    """Pre-norm self-attention over the pixels of a map: ``(b, c, p, q) -> (b, c, p, q)``.

    ``x + Attn(GN(x))`` with the ``p q`` pixels as tokens (``heads`` heads of ``c / heads``
    channels; the kernel is ``vdblocks.attention.attention``, so its backend rules apply).
    """

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        check_positive_int(heads, "heads")
        if channels % heads:
            raise ValueError(f"expected channels={channels} divisible by heads={heads}")
        self.norm = group_norm(channels, small_map_groups(channels))
        self.attn = Attention(channels, heads=heads, dim_head=channels // heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = x.shape[-2:]
        tokens = rearrange(self.norm(x), "b c p q -> b (p q) c")
        return x + rearrange(self.attn(tokens), "b (p q) c -> b c p q", p=p, q=q)
