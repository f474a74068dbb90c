"""Channel shuffle (ShuffleNet, Zhang et al. 2018), used by EVDM's group shortcut and channel split."""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from ..validation import check_positive_int, check_tensor

__all__ = ["channel_shuffle", "channel_shuffle_permutation", "add_channel_shuffled", "ChannelShuffle"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups: ``(b, (g c), ...) -> (b, (c g), ...)``.

    Channel ``i * (C / g) + j`` of the input goes to channel ``j * g + i``; a permutation, so the
    result holds exactly the input's values. ``x`` is ``(b, c, *spatial)`` with ``c`` divisible by
    ``groups``.
    """
    check_positive_int(groups, "groups")
    check_tensor(x, "x", "(b, c, ...)", floating=False)  # any dtype: a permutation
    if x.shape[1] % groups:
        raise ValueError(f"expected x of shape (b, c, ...) with c divisible by groups={groups}, got c={x.shape[1]}")
    return rearrange(x, "b (g c) ... -> b (c g) ...", g=groups)


def channel_shuffle_permutation(channels: int, groups: int) -> torch.Tensor:
    """Index ``p`` with ``channel_shuffle(x, groups)[:, i] == x[:, p[i]]``."""
    idx = torch.arange(channels).view(1, channels, 1)
    return channel_shuffle(idx, groups).view(channels)


def add_channel_shuffled(x: torch.Tensor, y: torch.Tensor, groups: int, scale: float | None = None) -> torch.Tensor:
    """``(x + channel_shuffle(y, groups)) * scale`` without materialising the shuffle.

    ``x`` and ``y`` are floating ``(b, c, *spatial)`` of one shape, dtype (any under ``torch.autocast``)
    and device, with ``c`` divisible by ``groups``; the shuffled ``y`` is
    read through a strided view (``(b, g, c/g, ...)`` transposed to ``(b, c/g, g, ...)``), so the sum
    costs one pass over memory instead of two (EVDM's group shortcut, section 3.4). ``scale``
    (``None``: 1) multiplies the fresh sum in place, e.g. a residual's ``1 / sqrt(2)``.
    """
    check_positive_int(groups, "groups")
    check_tensor(x, "x", "(b, c, ...)")
    check_tensor(y, "y", "(b, c, ...)", like=x, like_name="x")
    if x.shape != y.shape:
        raise ValueError(
            f"expected x and y of the same shape (b, c, ...), got {tuple(getattr(x, 'shape', ()))} "
            f"and {tuple(getattr(y, 'shape', ()))}"
        )
    b, c, *spatial = x.shape
    if c % groups:
        raise ValueError(f"expected x and y of shape (b, c, ...) with c divisible by groups={groups}, got c={c}")
    y_shuffled = y.reshape(b, groups, c // groups, *spatial).transpose(1, 2)  # b c/g g ...
    out = torch.add(x.reshape(b, c // groups, groups, *spatial), y_shuffled)  # b c/g g ...
    if scale is not None:
        out = out.mul_(scale)  # before the reshape, so autograd sees no in-place op on a view
    return out.reshape(b, c, *spatial)


class ChannelShuffle(nn.Module):
    """Module form of :func:`channel_shuffle`: ``(b, c, *spatial) -> (b, c, *spatial)``."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = check_positive_int(groups, "groups")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
