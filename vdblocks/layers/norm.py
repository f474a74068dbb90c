"""GroupNorm with a group count that always divides the channels."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..validation import check_positive_int

__all__ = ["num_groups_for", "group_norm", "check_group_norm_input"]


def num_groups_for(channels: int, max_groups: int = 32) -> int:
    """Largest group count ``<= max_groups`` that divides ``channels`` (32 for the usual widths)."""
    check_positive_int(channels, "channels")
    check_positive_int(max_groups, "max_groups")
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def group_norm(channels: int, max_groups: int = 32, eps: float = 1e-6, affine: bool = True) -> nn.GroupNorm:
    """``nn.GroupNorm`` over ``channels`` with :func:`num_groups_for` groups."""
    return nn.GroupNorm(num_groups_for(channels, max_groups), channels, eps=eps, affine=affine)


def check_group_norm_input(module: nn.Module, x: torch.Tensor) -> None:
    """Raise ``ValueError`` when a GroupNorm inside ``module`` would normalise single values: ``x (b, c,
    h, w)`` with ``b = h = w = 1`` and a group of one channel (its variance is zero, so it
    normalises every value to zero)."""
    b, _, h, w = x.shape
    if b * h * w > 1:
        return
    for m in module.modules():
        if isinstance(m, nn.GroupNorm) and m.num_channels // m.num_groups == 1:
            raise ValueError(
                f"expected x of shape (b, c, h, w) with b*h*w > 1 for this block, got {tuple(x.shape)}: "
                f"its GroupNorm over {m.num_channels} channels in {m.num_groups} groups would normalize "
                "single values"
            )
