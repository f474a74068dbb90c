"""PVDM's latent ``z = [z_s, z_h, z_w]`` as one tensor: packing the three planes and back.

The planes of a ``t x h x w`` grid (section 3.2) have different shapes, ``z_s (b, C, h, w)``,
``z_h (b, C, t, w)``, ``z_w (b, C, t, h)``; the diffusion samplers and losses of
:mod:`vdblocks.diffusion` work on one tensor ``(b, ...)``. :func:`pack_planes` flattens each plane
and concatenates them into ``(b, C, n)`` with ``n = h w + t w + t h``, the "latent vector" whose
size the paper counts (``n * C = 8192`` for 16x256x256 videos with 32x32 planes);
:func:`unpack_planes` inverts it given the grid ``(t, h, w)``. Element-wise operations (noising,
DDIM updates, the denoising loss) are the same on either form.
"""

from __future__ import annotations

import torch
from einops import rearrange

from vdblocks.layers.triplane import triplane_latent_size
from vdblocks.validation import check_positive_int, check_tensor

__all__ = ["Planes", "check_grid", "pack_planes", "plane_shapes", "unpack_planes"]

Planes = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def check_grid(grid: object) -> tuple[int, int, int]:
    """``grid`` as three positive ints ``(t, h, w)``; ``ValueError`` otherwise."""
    if not isinstance(grid, (tuple, list)) or len(grid) != 3:
        raise ValueError(f"expected the latent grid as three positive ints (t, h, w), got {grid!r}")
    t, h, w = (check_positive_int(v, name) for v, name in zip(grid, ("t", "h", "w")))
    return t, h, w


def plane_shapes(grid: tuple[int, int, int]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Spatial shapes of the three planes of a ``(t, h, w)`` grid: ``((h, w), (t, w), (t, h))``."""
    t, h, w = check_grid(grid)
    return (h, w), (t, w), (t, h)


def pack_planes(z_s: torch.Tensor, z_h: torch.Tensor, z_w: torch.Tensor) -> torch.Tensor:
    """``z_s (b, C, h, w)``, ``z_h (b, C, t, w)``, ``z_w (b, C, t, h)`` -> ``(b, C, h w + t w + t h)``."""
    check_tensor(z_s, "z_s", "(b, c, h, w)")
    b, c, h, w = z_s.shape
    check_tensor(z_h, "z_h", "(b, c, t, w)", sizes={"b": b, "c": c, "w": w})
    t = z_h.shape[2]
    check_tensor(z_w, "z_w", "(b, c, t, h)", sizes={"b": b, "c": c, "t": t, "h": h})
    return torch.cat(
        [
            rearrange(z_s, "b c h w -> b c (h w)"),
            rearrange(z_h, "b c t w -> b c (t w)"),
            rearrange(z_w, "b c t h -> b c (t h)"),
        ],
        dim=2,
    )  # b C n


def unpack_planes(z: torch.Tensor, grid: tuple[int, int, int]) -> Planes:
    """Inverse of :func:`pack_planes`: ``(b, C, n)`` -> ``(z_s, z_h, z_w)`` for the grid ``(t, h, w)``."""
    t, h, w = check_grid(grid)
    check_tensor(z, "z", "(b, c, n)")
    n = triplane_latent_size(t, h, w, 1)
    if z.shape[2] != n:
        raise ValueError(
            f"expected z of shape (b, c, n) with n = h w + t w + t h = {n} for the grid (t, h, w) = {(t, h, w)}, "
            f"got {tuple(z.shape)}"
        )
    s, hh, ww = torch.split(z, [h * w, t * w, t * h], dim=2)
    return (
        rearrange(s, "b c (h w) -> b c h w", h=h),  # b C h w
        rearrange(hh, "b c (t w) -> b c t w", t=t),  # b C t w
        rearrange(ww, "b c (t h) -> b c t h", t=t),  # b C t h
    )
