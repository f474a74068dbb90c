"""Blocks of the ADM / LDM image U-Net that several reference systems share.

:class:`ADMResBlock` is the residual block of "Diffusion Models Beat GANs" (Dhariwal & Nichol) with
the scale-shift norm: PVDM's triplane U-Net runs it on each latent plane, CMD's content U-Net on
content frames. :class:`SelfAttention2d` is the U-Net's spatial self-attention over the pixels of a
feature map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vdblocks import ScaleShiftGroupNorm
from vdblocks.validation import check_positive_int
from vdblocks.layers.norm import group_norm
from vdblocks.layers.transformer import Attention

__all__ = ["ADMResBlock", "SelfAttention2d", "small_map_groups"]


def small_map_groups(channels: int) -> int:
    """GroupNorm groups: at most 32 (LDM's), with at least two channels per group, so that a map
    downsampled to ``1 x 1`` still has more than one value per group to normalise."""
    return max(1, min(32, channels // 2))


class ADMResBlock(nn.Module):
    """ADM res block with scale-shift norm: ``x (b, c_in, p, q), emb (b, e) -> (b, c_out, p, q)``.

    ``h = conv(SiLU(GN(x))); h = conv(dropout(SiLU(GN(h) (1 + s) + b))); out = skip(x) + h`` with
    ``[s, b] = Linear(SiLU(emb))``; ``skip`` is a 1x1 convolution when the widths differ.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, small_map_groups(in_channels))
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = ScaleShiftGroupNorm(out_channels, emb_dim, max_groups=small_map_groups(out_channels))
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # b c_out p q
        h = self.conv2(self.dropout(F.silu(self.norm2(h, emb))))  # b c_out p q
        return self.skip(x) + h


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
