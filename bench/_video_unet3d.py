"""A pixel-space video U-Net in the style of VDM (Ho et al. 2022), the baseline PVDM is timed against.

PVDM's efficiency comparison (section 4.3, Table 5) is against VDM, a diffusion model on video
pixels whose U-Net is an image U-Net made 3D: "each 2D convolution [is] a space-only 3D
convolution" (``1 x 3 x 3``), and "after each spatial attention block" comes "a temporal attention
block that performs attention over the first axis". This module is that network, plain but
complete, so that ``bench/pvdm_cost.py`` can count and time both denoisers in one run. It is a
benchmark's yardstick, not part of PVDM, so it lives with the benchmarks; scripts run as files
(``python bench/pvdm_cost.py``) have this folder on ``sys.path`` and import it as
``from _video_unet3d import VideoUNet3D``::

    conv(1x3x3, c -> c_0)
    per level l: N x [ResBlock3D, (space attention, time attention) if 2^l attends], then a
                 (1x3x3, stride 1x2x2) conv but at the last level
    middle:      ResBlock3D, space + time attention, ResBlock3D
    per level l (from the last): (N + 1) x [ResBlock3D on [h, skip], attention as above], then
                 nearest 1x2x2 upsampling + conv but at level 0
    GroupNorm, SiLU, conv(1x3x3, c_0 -> c)

Shapes: ``x (b, c, T, H, W), t (b,) -> eps (b, c, T, H, W)`` for any ``T >= 1`` and any ``H, W``
(stride-2 convolutions round up, upsampling returns to the skip's size). Temporal attention uses
sin-cos frame positions (VDM uses relative position biases; the cost is the same).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vdblocks import ScaleShiftGroupNorm, TimestepEmbedding
from vdblocks.layers.embeddings import sincos_1d
from vdblocks.layers.norm import group_norm
from vdblocks.layers.transformer import Attention
from vdblocks.validation import check_positive_int, check_tensor

__all__ = ["VideoUNet3D"]


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at most 32 groups and at least two channels per group."""
    return group_norm(channels, max(1, min(32, channels // 2)))


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv3d:
    """A space-only 3D convolution (``1 x 3 x 3``), VDM's replacement for a 2D one."""
    return nn.Conv3d(cin, cout, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1))


class _ResBlock3D(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), _conv(cin, cout)
        self.norm2, self.conv2 = (
            ScaleShiftGroupNorm(cout, emb_dim, max_groups=max(1, min(32, cout // 2))),
            _conv(cout, cout),
        )
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # b c t h w
        return self.skip(x) + self.conv2(F.silu(self.norm2(h, emb)))


class _SpaceTimeAttention(nn.Module):
    """VDM's factorised attention: over the ``h w`` positions of each frame, then over the ``t`` frames."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.channels = channels
        self.norm_space, self.space = _norm(channels), Attention(channels, heads, channels // heads)
        self.norm_time, self.time = _norm(channels), Attention(channels, heads, channels // heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, t, h, w = x.shape[1:]
        s = rearrange(self.norm_space(x), "b c t h w -> (b t) (h w) c")
        x = x + rearrange(self.space(s), "(b t) (h w) c -> b c t h w", t=t, h=h)  # b c t h w
        pos = sincos_1d(c + c % 2, torch.arange(t))[:, :c].to(x)  # t c
        s = rearrange(self.norm_time(x), "b c t h w -> (b h w) t c") + pos
        return x + rearrange(self.time(s), "(b h w) t c -> b c t h w", h=h, w=w)  # b c t h w


class VideoUNet3D(nn.Module):
    """VDM-style pixel-space video denoiser: ``(b, c, T, H, W), t (b,) -> (b, c, T, H, W)``.

    ``attn_resolutions`` are downsample factors ``2 ** level`` (LDM's convention) at which every
    res block is followed by space and time attention; the middle block always attends.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 128,
        channel_mult: tuple[int, ...] = (1, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (4, 2, 1),
        heads: int = 8,
        emb_mult: int = 4,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        c0 = check_positive_int(base_channels, "base_channels")
        check_positive_int(num_res_blocks, "num_res_blocks")
        if not channel_mult or any(not isinstance(m, int) or m <= 0 for m in channel_mult):
            raise ValueError(f"expected channel_mult to be a non-empty tuple of positive ints, got {channel_mult!r}")
        E = emb_mult * c0
        self.time_embed = TimestepEmbedding(E, frequency_dim=c0)
        self.input_conv = _conv(in_channels, c0)

        def attn(ch: int, factor: int) -> nn.Module | None:
            return _SpaceTimeAttention(ch, heads) if factor in attn_resolutions else None

        ch, factor, skips = c0, 1, [c0]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([_ResBlock3D(ch, c0 * mult, E), attn(c0 * mult, factor)]))
                ch = c0 * mult
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([_conv(ch, ch, stride=2)]))
                skips.append(ch)
                factor *= 2
        self.mid = nn.ModuleList([_ResBlock3D(ch, ch, E), _SpaceTimeAttention(ch, heads), _ResBlock3D(ch, ch, E)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                out = c0 * mult
                up = _conv(out, out) if level > 0 and i == num_res_blocks else None
                self.up.append(nn.ModuleList([_ResBlock3D(ch + skips.pop(), out, E), attn(out, factor), up]))
                ch = out
            factor //= 2
        self.out_norm, self.out_conv = _norm(ch), _conv(ch, in_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(b, c, t, h, w)", sizes={"c": self.in_channels})
        emb = self.time_embed(t)  # b E
        hs = [self.input_conv(x)]
        for layer in self.down:
            if len(layer) == 1:
                hs.append(layer[0](hs[-1]))  # b c t ceil(h/2) ceil(w/2)
                continue
            h = layer[0](hs[-1], emb)
            hs.append(layer[1](h) if layer[1] is not None else h)
        h = self.mid[2](self.mid[1](self.mid[0](hs[-1], emb)), emb)
        for res, att, up in self.up:
            h = res(torch.cat([h, hs.pop()], dim=1), emb)
            if att is not None:
                h = att(h)
            if up is not None:
                h = up(F.interpolate(h, size=hs[-1].shape[2:], mode="nearest"))
        return self.out_conv(F.silu(self.out_norm(h)))  # b c t h w
