"""PVDM's triplane projection: a 3D feature volume to three 2D latent planes, and back.

PVDM (Yu et al., CVPR 2023), section 3.2. A video encoder gives features ``u (b, c, t, h, w)``
(``u = f_shw(x)``, ``S = t``, ``H' = h``, ``W' = w``); three small transformers project it:

* ``z^s_hw = f_s(u_1hw, ..., u_Shw)``: for every pixel ``(h, w)``, the ``t`` tokens along time ->
  ``z_s (b, C, h, w)``, the content plane;
* ``z^h_sw = f_h(u_s1w, ..., u_sH'w)``: for every ``(t, w)``, the ``h`` tokens along height ->
  ``z_h (b, C, t, w)``;
* ``z^w_sh = f_w(u_sh1, ..., u_shW')``: for every ``(t, h)``, the ``w`` tokens along width ->
  ``z_w (b, C, t, h)``;

each followed by a linear map to the latent width ``C`` and ``tanh`` (as PVDM's released
``ViTAutoencoder.encode``). The decoder side rebuilds the volume
``v_shw = [z^s_hw, z^h_sw, z^w_sh]`` of shape ``(b, 3C, t, h, w)`` (:func:`triplane_expand`), so the
whole video is carried by ``(hw + tw + th) * C`` numbers (:func:`triplane_latent_size`).

Readings taken where the paper leaves it open:

* **Positions.** Each sequence gets a fixed sin-cos embedding (:func:`~vdblocks.layers.sincos_1d`)
  along its own axis, so one projector takes any ``t``, ``h`` or ``w``. The release learns a table
  of fixed length (hard-coded 16 frames / 32 pixels), which breaks on other sizes.
* **Pooling.** ``pool="token"`` (default) prepends one learnable summary token per projector, with
  no position, and reads the latent from its output, ViT's ``[CLS]``; ``pool="mean"`` averages the
  output tokens instead. The release appends a learnable token but then reads output 0, which is
  the first *data* token (its summary token only acts as an extra key); we read the summary token
  itself, which is what the extra token is evidently meant for.
* **Final norm.** A ``LayerNorm`` precedes the output linear, as after any pre-norm transformer
  stack (ViT); the release omits it.
* **Decoder volume.** The paper concatenates the three codes (``3C`` channels); the release instead
  maps each plane back to the encoder width and *sums* them. We follow the paper; a user who wants
  the sum can apply three 1x1 convolutions to the planes before expanding.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange, repeat

from ..attention.dispatch import BackendSpec
from ..validation import check_positive_int, check_tensor
from .embeddings import sincos_1d
from .transformer import TransformerBlock

__all__ = ["AxisProjector", "TriplaneProjector", "triplane_expand", "triplane_latent_size"]

_POOLS = ("token", "mean")
_COMBINES = ("concat", "sum")

# For each axis a volume can be projected along: volume -> sequences, codes -> plane.
_AXIS_LAYOUTS = {
    "t": ("b c t h w -> (b h w) t c", "(b h w) c -> b c h w"),
    "h": ("b c t h w -> (b t w) h c", "(b t w) c -> b c t w"),
    "w": ("b c t h w -> (b t h) w c", "(b t h) c -> b c t h"),
}


def triplane_latent_size(t: int, h: int, w: int, latent_channels: int) -> int:
    """Numbers in a triplane latent: ``(h w + t w + t h) * C``.

    With PVDM's setting (16 frames of 256x256, patch 8, so ``t=16, h=w=32``, and ``C=4``) this is
    ``(1024 + 512 + 512) * 4 = 8192`` (PVDM appendix D), against ``t h w C = 65536`` for a 3D latent.
    """
    for value, name in ((t, "t"), (h, "h"), (w, "w"), (latent_channels, "latent_channels")):
        check_positive_int(value, name)
    return (h * w + t * w + t * h) * latent_channels


def _positions(dim: int, length: int, max_period: float, like: torch.Tensor) -> torch.Tensor:
    """Sin-cos positions ``(length, dim)``; an odd ``dim`` drops the last channel of ``dim + 1``."""
    work = torch.float64 if like.dtype == torch.float64 else torch.float32
    pos = torch.arange(length, dtype=work, device=like.device)
    return sincos_1d(dim + dim % 2, pos, max_period)[:, :dim].to(like.dtype)  # l dim


class AxisProjector(nn.Module):
    """One of PVDM's 3D-to-2D projections ``f_s``, ``f_h`` or ``f_w``: a sequence to one latent code.

    Shapes: sequences ``(n, l, dim)`` -> codes ``(n, latent_channels)`` in ``[-1, 1]``, for any
    ``l``. Tokens get sin-cos positions, pass ``depth`` :class:`TransformerBlock` s (whose attention
    goes through :func:`vdblocks.attention.attention`, so ``backend`` and the dispatch rules apply),
    are pooled (``"token"``: a learnable summary token; ``"mean"``), normalised, mapped by a linear
    to ``latent_channels`` and squashed by ``tanh``.
    """

    def __init__(
        self,
        dim: int,
        latent_channels: int,
        depth: int = 4,
        heads: int = 4,
        dim_head: int | None = None,
        mlp_ratio: float = 4.0,
        pool: str = "token",
        max_period: float = 10000.0,
        backend: BackendSpec | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.latent_channels = check_positive_int(latent_channels, "latent_channels")
        self.depth = check_positive_int(depth, "depth")
        heads = check_positive_int(heads, "heads")
        dim_head = check_positive_int(dim_head if dim_head is not None else max(1, dim // heads), "dim_head")
        if pool not in _POOLS:
            raise ValueError(f"expected pool to be one of {_POOLS}, got {pool!r}")
        self.pool = pool
        self.max_period = float(max_period)
        self.token = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if pool == "token" else None
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads=heads, dim_head=dim_head, mlp_ratio=mlp_ratio, backend=backend)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.to_latent = nn.Linear(dim, latent_channels)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        check_tensor(seq, "seq", "(n, l, dim)", sizes={"dim": self.dim}, like=self)
        n, length, _ = seq.shape
        x = seq + _positions(self.dim, length, self.max_period, seq)  # n l dim
        if self.token is not None:
            # The summary token carries no position: it is not a place along the axis.
            x = torch.cat([self.token.to(x.dtype).expand(n, -1, -1), x], dim=1)  # n (1 + l) dim
        for block in self.blocks:
            x = block(x)  # n l' dim
        pooled = x[:, 0] if self.token is not None else x.mean(dim=1)  # n dim
        return torch.tanh(self.to_latent(self.norm(pooled)))  # n latent_channels

    def project(self, u: torch.Tensor, axis: str) -> torch.Tensor:
        """Project a whole feature volume along one axis: ``u (b, dim, t, h, w)`` -> a latent plane.

        ``axis="t"`` gives ``(b, C, h, w)`` (PVDM's ``z_s``: one code per time line),
        ``axis="h"`` gives ``(b, C, t, w)`` (``z_h``) and ``axis="w"`` gives ``(b, C, t, h)``
        (``z_w``), ``C = latent_channels``. :class:`TriplaneProjector` runs three projectors this
        way; a model that takes its content from elsewhere (e.g. CMD's content frame) can keep
        just the two motion planes with two projectors.
        """
        if axis not in _AXIS_LAYOUTS:
            raise ValueError(f"expected axis to be one of {tuple(_AXIS_LAYOUTS)}, got {axis!r}")
        check_tensor(u, "u", "(b, dim, t, h, w)", sizes={"dim": self.dim}, like=self)
        to_seq, to_plane = _AXIS_LAYOUTS[axis]
        sizes = dict(zip("bthw", (u.shape[0], *u.shape[2:])))
        del sizes[axis]  # the projected axis is gone from the plane
        codes = self(rearrange(u, to_seq))  # (b, two kept axes) C
        return rearrange(codes, to_plane, **sizes)  # b C, then the two kept axes

    def extra_repr(self) -> str:
        return f"dim={self.dim}, latent_channels={self.latent_channels}, depth={self.depth}, pool={self.pool!r}"


def triplane_expand(
    z_s: torch.Tensor, z_h: torch.Tensor, z_w: torch.Tensor, *, combine: str = "concat"
) -> torch.Tensor:
    """PVDM's decoder volume ``v_shw = [z^s_hw, z^h_sw, z^w_sh]`` (section 3.2), or its sum.

    Shapes: ``z_s (b, c, h, w)``, ``z_h (b, c, t, w)``, ``z_w (b, c, t, h)`` ->
    ``(b, 3c, t, h, w)`` with ``combine="concat"`` (the paper): channels ``[0, c)`` hold ``z_s``
    broadcast over time, ``[c, 2c)`` hold ``z_h`` broadcast over height, ``[2c, 3c)`` hold ``z_w``
    broadcast over width. ``combine="sum"`` gives ``(b, c, t, h, w)``,
    ``v_thw = z_s[h, w] + z_h[t, w] + z_w[t, h]``: CMD's decoder input (eq. 6, after its
    per-plane embeddings of eq. 5) and what PVDM's release does after mapping each plane to the
    decoder width. (A linear map of the concatenation equals a sum of per-plane linear maps, but
    the two start from different scales: with planes embedded to the width first, each plane
    weighs as much as the others from the first step.)
    """
    if combine not in _COMBINES:
        raise ValueError(f"expected combine to be one of {_COMBINES}, got {combine!r}")
    check_tensor(z_s, "z_s", "(b, c, h, w)")
    b, c, h, w = z_s.shape
    check_tensor(z_h, "z_h", "(b, c, t, w)", sizes={"b": b, "c": c, "w": w}, like=z_s, like_name="z_s", autocast=False)
    t = z_h.shape[2]
    check_tensor(
        z_w, "z_w", "(b, c, t, h)", sizes={"b": b, "c": c, "t": t, "h": h}, like=z_s, like_name="z_s", autocast=False
    )
    if combine == "sum":
        # Broadcasting adds the three without materialising three full volumes.
        return (
            rearrange(z_s, "b c h w -> b c 1 h w")
            + rearrange(z_h, "b c t w -> b c t 1 w")
            + rearrange(z_w, "b c t h -> b c t h 1")
        )  # b c t h w
    return torch.cat(
        [
            repeat(z_s, "b c h w -> b c t h w", t=t),
            repeat(z_h, "b c t w -> b c t h w", h=h),
            repeat(z_w, "b c t h -> b c t h w", w=w),
        ],
        dim=1,
    )  # b 3c t h w


class TriplaneProjector(nn.Module):
    """PVDM's 3D-to-2D projection ``f_s x f_h x f_w`` (section 3.2), for any ``t, h, w``.

    Shapes: ``u (b, dim, t, h, w)`` -> ``(z_s (b, C, h, w), z_h (b, C, t, w), z_w (b, C, t, h))``
    with ``C = latent_channels`` and every entry in ``[-1, 1]``. Three separate
    :class:`AxisProjector` s, ``phi_s``, ``phi_h``, ``phi_w``, run along time, height and width.
    :meth:`expand` is the decoder-side inverse layout, ``(b, 3C, t, h, w)``.

    PVDM's setting (appendix D): ``depth=4``, ``heads=4``, width 384 with MLP 512, ``C=4``; its
    release uses ``dim_head = dim // 8``. Here ``dim_head`` defaults to ``dim // heads``.
    """

    def __init__(
        self,
        dim: int,
        latent_channels: int,
        depth: int = 4,
        heads: int = 4,
        dim_head: int | None = None,
        mlp_ratio: float = 4.0,
        pool: str = "token",
        max_period: float = 10000.0,
        backend: BackendSpec | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.latent_channels = check_positive_int(latent_channels, "latent_channels")
        kwargs = dict(
            depth=depth,
            heads=heads,
            dim_head=dim_head,
            mlp_ratio=mlp_ratio,
            pool=pool,
            max_period=max_period,
            backend=backend,
        )
        self.phi_s = AxisProjector(dim, latent_channels, **kwargs)
        self.phi_h = AxisProjector(dim, latent_channels, **kwargs)
        self.phi_w = AxisProjector(dim, latent_channels, **kwargs)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_tensor(u, "u", "(b, dim, t, h, w)", sizes={"dim": self.dim}, like=self)
        return (
            self.phi_s.project(u, "t"),  # b C h w
            self.phi_h.project(u, "h"),  # b C t w
            self.phi_w.project(u, "w"),  # b C t h
        )

    def expand(self, z_s: torch.Tensor, z_h: torch.Tensor, z_w: torch.Tensor) -> torch.Tensor:
        """:func:`triplane_expand` with the plane width checked against ``latent_channels``."""
        check_tensor(z_s, "z_s", "(b, c, h, w)", sizes={"c": self.latent_channels}, floating=True)
        return triplane_expand(z_s, z_h, z_w)

    def latent_size(self, t: int, h: int, w: int) -> int:
        """Numbers per video in the latent of a ``(t, h, w)`` feature volume: ``(hw + tw + th) * C``."""
        return triplane_latent_size(t, h, w, self.latent_channels)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, latent_channels={self.latent_channels}"
