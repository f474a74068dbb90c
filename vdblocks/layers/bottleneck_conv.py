"""EVDM's bottleneck convolution (eqs. 9-10), shared by the plain BRP stage and the channel split.

Eq. 9 squeezes the block's input through a pointwise convolution to ``c_out // delta`` channels and
normalises it (GroupNorm, scale-shifted by the time embedding under temporal enhancement); eq. 10
runs a 3x3 and a 1x1 convolution side by side on that bottleneck and concatenates them. The
pre-activation before eq. 9 belongs to the caller (inside the BRP: scale-shift GroupNorm and ReLU).
This module has no boundary checks of its own: its two users check their inputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .modulation import ScaleShiftGroupNorm
from .norm import group_norm
from .pointwise import PointwiseConv2d

__all__ = ["BottleneckConv"]


class BottleneckConv(nn.Module):
    """EVDM eqs. 9-10 after the ReLU: pointwise bottleneck, (scale-shift) GroupNorm, 3x3 || 1x1.

    ``(b, c_in, h, w) -> (b, c_out, h, w)``: ``1x1 (c_in -> w)``, then ``GN(.) * (1 + e_1) + e_2`` with
    ``[e_1, e_2]`` from the embedding when ``emb_dim`` is given (plain affine GroupNorm otherwise), then
    the concatenation ``[3x3 (w -> ceil(c_out/2)), 1x1 (w -> floor(c_out/2))]``. The pointwise path
    is left out when ``c_out == 1``. Shared by the plain BRP stage
    (:class:`~vdblocks.layers.bottleneck.BottleneckResidualPathway`) and
    :class:`~vdblocks.layers.channel_split.ChannelSplit`, which validate its inputs at their boundary.
    """

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, emb_dim: int | None) -> None:
        super().__init__()
        self.bottleneck = PointwiseConv2d(in_channels, bottleneck_channels)  # reads a channel slice in place
        self.norm: nn.Module
        if emb_dim is None:
            self.norm = group_norm(bottleneck_channels)
        else:
            self.norm = ScaleShiftGroupNorm(bottleneck_channels, emb_dim)
        self.conv3x3 = nn.Conv2d(bottleneck_channels, out_channels - out_channels // 2, kernel_size=3, padding=1)
        self.conv1x1 = PointwiseConv2d(bottleneck_channels, out_channels // 2) if out_channels // 2 else None

    def branches(self, x: torch.Tensor, emb: torch.Tensor | None) -> list[torch.Tensor]:
        """The parallel paths' outputs, in concatenation order: ``[3x3 (b, ceil(c_out/2), h, w), 1x1 (...)]``."""
        y = self.bottleneck(x)  # b c_bottleneck h w
        y = self.norm(y) if emb is None else self.norm(y, emb)  # b c_bottleneck h w
        paths = [self.conv3x3(y)]  # b ceil(c_out/2) h w
        if self.conv1x1 is not None:
            paths.append(self.conv1x1(y))  # b floor(c_out/2) h w
        return paths

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        return torch.cat(self.branches(x, emb), dim=1)  # b c_out h w
