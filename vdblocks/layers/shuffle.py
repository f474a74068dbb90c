"""Channel shuffle (ShuffleNet, Zhang et al. 2018), used by EVDM's group shortcut and channel split."""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from .._validation import check_positive_int

__all__ = ["channel_shuffle", "channel_shuffle_permutation", "ChannelShuffle"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups: ``(b, (g c), ...) -> (b, (c g), ...)``.

    Channel ``i * (C / g) + j`` of the input goes to channel ``j * g + i``; a permutation, so the
    result holds exactly the input's values. ``x`` is ``(b, c, *spatial)`` with ``c`` divisible by
    ``groups``.
    """
    check_positive_int(groups, "groups")
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise ValueError(f"expected x of shape (b, c, ...), got {getattr(x, 'shape', type(x))}")
    if x.shape[1] % groups:
        raise ValueError(
            f"expected x of shape (b, c, ...) with c divisible by groups={groups}, got c={x.shape[1]}"
        )
    return rearrange(x, "b (g c) ... -> b (c g) ...", g=groups)


def channel_shuffle_permutation(channels: int, groups: int) -> torch.Tensor:
    """Index ``p`` with ``channel_shuffle(x, groups)[:, i] == x[:, p[i]]``."""
    idx = torch.arange(channels).view(1, channels, 1)
    return channel_shuffle(idx, groups).view(channels)


class ChannelShuffle(nn.Module):
    """Module form of :func:`channel_shuffle`: ``(b, c, *spatial) -> (b, c, *spatial)``."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = check_positive_int(groups, "groups")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
