"""TimeSformer-style video transformer: patch embedding and divided space-time attention blocks.

The base network of PVDM's autoencoder (section 3.2, "a video transformer with divided space-time
attention", after TimeSformer, Bertasius et al. 2021) and of CMD's autoencoder (section 3.2, Table 5,
"TimeSformer"). A video ``(b, c, t, h, w)`` is cut into ``pt x ph x pw`` patches
(:class:`VideoPatchEmbed`), each block attends first along time for every spatial position, then
over space for every frame (:class:`DividedSpaceTimeBlock`), and :class:`VideoPatchUnembed` maps
tokens back to pixels.

Readings taken:

* **Positions** are fixed sin-cos tables (2D over ``(h, w)`` plus 1D over ``t``, added once after the
  patch embedding), so one network accepts any frame count and any (non-square) frame size. The
  TimeSformer and PVDM releases learn tables of fixed length, which ties a model to one size.
* **Blocks are pre-norm** (``x + Attn(LN(x))``) with the temporal attention before the spatial
  one, as TimeSformer's "divided space-time" variant. TimeSformer adds a linear after the temporal
  attention; here the attention's own output projection plays that role.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..attention.dispatch import BackendSpec
from ..validation import check_positive_int, check_tensor
from .embeddings import sincos_1d, sincos_2d
from .transformer import Attention, FeedForward

__all__ = ["DividedSpaceTimeBlock", "VideoPatchEmbed", "VideoPatchUnembed", "VideoTransformer", "video_positions"]


def _patch(patch_size: int | tuple[int, int, int]) -> tuple[int, int, int]:
    p = (patch_size,) * 3 if isinstance(patch_size, int) else tuple(patch_size)
    if len(p) != 3:
        raise ValueError(f"expected patch_size as an int or (pt, ph, pw), got {patch_size!r}")
    for value, name in zip(p, ("pt", "ph", "pw")):
        check_positive_int(value, f"patch_size {name}")
    return p  # type: ignore[return-value]


def video_positions(dim: int, t: int, h: int, w: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """Sin-cos positions for a ``t x h x w`` token grid: ``-> (t, h, w, dim)``.

    The 2D table over ``(h, w)`` (:func:`~vdblocks.layers.sincos_2d`) plus the 1D table over ``t``
    (:func:`~vdblocks.layers.sincos_1d`); ``dim`` must be divisible by 4.
    """
    work = torch.float64 if like is not None and like.dtype == torch.float64 else torch.float32
    space = rearrange(sincos_2d(dim, h, w, dtype=work), "(h w) c -> h w c", h=h)  # h w dim
    time = sincos_1d(dim, torch.arange(t, dtype=work))  # t dim
    pos = time[:, None, None] + space[None]  # t h w dim
    if like is not None:
        pos = pos.to(device=like.device, dtype=like.dtype)
    return pos


class VideoPatchEmbed(nn.Module):
    """Cut a video into ``pt x ph x pw`` patches and embed each: ``(b, c, t, h, w) -> (b, t', h', w', dim)``.

    ``t' = t / pt``, ``h' = h / ph``, ``w' = w / pw``: every size must divide exactly (the error says
    which one does not). A strided ``Conv3d``, i.e. one linear map per patch.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int | tuple[int, int, int] = (1, 4, 4)) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.dim = check_positive_int(dim, "dim")
        self.patch_size = _patch(patch_size)
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(b, c, t, h, w)", sizes={"c": self.in_channels}, like=self)
        for size, p, name in zip(x.shape[2:], self.patch_size, ("t", "h", "w")):
            if size % p:
                raise ValueError(
                    f"expected x of shape (b, c, t, h, w) with {name} divisible by the patch size {p}, "
                    f"got {tuple(x.shape)}"
                )
        return rearrange(self.proj(x), "b c t h w -> b t h w c")  # b t' h' w' dim


class VideoPatchUnembed(nn.Module):
    """Map tokens back to pixels: ``(b, t', h', w', dim) -> (b, c, t' pt, h' ph, w' pw)``.

    A LayerNorm and one linear map per token to its ``c * pt * ph * pw`` pixel values.
    """

    def __init__(self, dim: int, out_channels: int, patch_size: int | tuple[int, int, int] = (1, 4, 4)) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.patch_size = _patch(patch_size)
        pt, ph, pw = self.patch_size
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_channels * pt * ph * pw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(b, t, h, w, dim)", sizes={"dim": self.dim}, like=self)
        pt, ph, pw = self.patch_size
        out = self.proj(self.norm(x))  # b t' h' w' (c pt ph pw)
        return rearrange(
            out, "b t h w (c pt ph pw) -> b c (t pt) (h ph) (w pw)", c=self.out_channels, pt=pt, ph=ph, pw=pw
        )


class DividedSpaceTimeBlock(nn.Module):
    """One TimeSformer block with divided attention on a token grid ``(b, t, h, w, dim)``.

    ``x = x + TimeAttn(LN(x))`` (each ``(h, w)`` position attends over its ``t`` tokens),
    ``x = x + SpaceAttn(LN(x))`` (each frame's ``h w`` tokens attend to each other),
    ``x = x + FF(LN(x))``. Cost per block: ``O(t^2 h w + t (h w)^2)`` instead of ``O((t h w)^2)``.
    Shape-preserving: ``(b, t, h, w, dim) -> (b, t, h, w, dim)``.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        backend: BackendSpec | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.norm_time = nn.LayerNorm(dim)
        self.attn_time = Attention(dim, heads, dim_head, backend=backend)
        self.norm_space = nn.LayerNorm(dim)
        self.attn_space = Attention(dim, heads, dim_head, backend=backend)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(b, t, h, w, dim)", sizes={"dim": self.dim}, like=self)
        b, t, h, w, _ = x.shape
        xt = rearrange(x, "b t h w c -> (b h w) t c")
        xt = xt + self.attn_time(self.norm_time(xt))  # (b h w) t dim
        xs = rearrange(xt, "(b h w) t c -> (b t) (h w) c", b=b, h=h, w=w)
        xs = xs + self.attn_space(self.norm_space(xs))  # (b t) (h w) dim
        xs = xs + self.ff(self.norm_ff(xs))
        return rearrange(xs, "(b t) (h w) c -> b t h w c", t=t, h=h)  # b t h w dim


class VideoTransformer(nn.Module):
    """A stack of :class:`DividedSpaceTimeBlock` with sin-cos positions added at the input and a final
    LayerNorm: ``(b, t, h, w, dim) -> (b, t, h, w, dim)``, for any ``t, h, w``.

    ``dim`` must be divisible by 4 (the 2D position table splits it between rows and columns).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int = 8,
        dim_head: int = 64,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        add_positions: bool = True,
        backend: BackendSpec | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        check_positive_int(depth, "depth")
        if add_positions and dim % 4:
            raise ValueError(f"expected dim divisible by 4 for the sin-cos positions, got {dim}")
        self.add_positions = add_positions
        self.blocks = nn.ModuleList(
            DividedSpaceTimeBlock(dim, heads, dim_head, mlp_ratio, dropout, backend) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(b, t, h, w, dim)", sizes={"dim": self.dim}, like=self)
        if self.add_positions:
            x = x + video_positions(self.dim, *x.shape[1:4], like=x)  # b t h w dim
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
