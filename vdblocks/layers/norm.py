"""GroupNorm with a group count that always divides the channels."""

from __future__ import annotations

import torch.nn as nn

from ..validation import check_positive_int

__all__ = ["num_groups_for", "group_norm"]


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
