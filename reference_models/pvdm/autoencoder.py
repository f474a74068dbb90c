"""PVDM's projected autoencoder: a video to three 2D latent planes and back (section 3.2).

Encoder ``f_phi = (f_s x f_h x f_w) o f_shw``:

    x (b, c, T, H, W)
      -> VideoPatchEmbed (pt x ph x pw patches)            (b, t, h, w, dim)
      -> VideoTransformer (divided time-then-space blocks)  u = f_shw(x)
      -> TriplaneProjector (f_s along t, f_h along h, f_w along w, tanh)
      -> z_s (b, C, h, w), z_h (b, C, t, w), z_w (b, C, t, h), all in [-1, 1]

Decoder ``g_psi``: the volume ``v_shw = [z^s_hw, z^h_sw, z^w_sh]`` (``(b, 3C, t, h, w)``,
:func:`~vdblocks.layers.triplane.triplane_expand`), a linear map of every ``3C`` vector to ``dim``,
a second :class:`~vdblocks.VideoTransformer` and :class:`~vdblocks.VideoPatchUnembed` back to
``(b, c, T, H, W)`` pixels. Both transformers use sin-cos positions, so one model takes any frame
count and any (non-square) frame size divisible by the patch size; the release hard-codes 16 frames
and square 32x32 token grids.

The projectors' MLP width is appendix D's 512 whatever ``dim`` is (the ratio is passed so that
``int(dim * ratio)`` lands on it exactly). The decoder output is linear (no ``tanh``): the L1 loss
pulls it into ``[-1, 1]`` and saturating the output would stall its gradient at the extremes.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from vdblocks import (
    TriplaneProjector,
    VideoPatchEmbed,
    VideoPatchUnembed,
    VideoTransformer,
)
from vdblocks.layers.triplane import triplane_expand
from vdblocks.validation import check_tensor

from ..common.pretrained import PretrainedMixin
from .config import AutoencoderConfig
from .planes import Planes, pack_planes, unpack_planes

__all__ = ["PVDMAutoencoder"]


class PVDMAutoencoder(nn.Module, PretrainedMixin):
    """PVDM's triplane autoencoder ``(f_phi, g_psi)`` built from an :class:`AutoencoderConfig`.

    * :meth:`encode` ``x (b, c, T, H, W) -> (z_s (b, C, h, w), z_h (b, C, t, w), z_w (b, C, t, h))``
      with ``t, h, w = T / pt, H / ph, W / pw`` and every entry in ``[-1, 1]``;
    * :meth:`decode` ``(z_s, z_h, z_w) -> x (b, c, T, H, W)``;
    * :meth:`encode_packed` / :meth:`decode_packed` the same on the packed latent ``(b, C, n)``,
      ``n = h w + t w + t h`` (:func:`~reference_models.pvdm.planes.pack_planes`);
    * ``forward(x)`` -> the reconstruction ``(b, c, T, H, W)``.

    ``save_pretrained`` / ``from_pretrained``: kind ``"pvdm_autoencoder"``, the autoencoder alone
    (training wraps it in ``AutoencoderObjective``; the exported weights leave the wrapper out).
    """

    pretrained_kind = "pvdm_autoencoder"
    config_class = AutoencoderConfig

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        if not isinstance(cfg, AutoencoderConfig):
            raise TypeError(f"expected an AutoencoderConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        dim, C = cfg.dim, cfg.latent_channels
        self.patch_embed = VideoPatchEmbed(cfg.channels, dim, cfg.patch_size)
        self.encoder = VideoTransformer(
            dim, cfg.encoder_depth, heads=cfg.heads, dim_head=cfg.dim_head, mlp_ratio=cfg.mlp_ratio
        )
        self.projector = TriplaneProjector(
            dim,
            C,
            depth=cfg.proj_depth,
            heads=cfg.proj_heads,
            mlp_ratio=(cfg.proj_mlp_dim + 0.5) / dim,
            pool=cfg.proj_pool,
        )
        self.from_latent = nn.Linear(3 * C, dim)
        self.decoder = VideoTransformer(
            dim, cfg.decoder_depth, heads=cfg.heads, dim_head=cfg.dim_head, mlp_ratio=cfg.mlp_ratio
        )
        self.unembed = VideoPatchUnembed(dim, cfg.channels, cfg.patch_size)

    def _check_video(self, x: torch.Tensor) -> None:
        check_tensor(x, "x", "(b, c, t, h, w)", sizes={"c": self.cfg.channels})
        try:
            self.cfg.check_video_size(*x.shape[2:])
        except ValueError as err:
            raise ValueError(f"x of shape (b, c, t, h, w) = {tuple(x.shape)}: {err}") from None

    def encode(self, x: torch.Tensor) -> Planes:
        """``x (b, c, T, H, W)`` in ``[-1, 1]`` -> ``(z_s, z_h, z_w)``, PVDM's ``f_phi(x)``."""
        self._check_video(x)
        tokens = self.encoder(self.patch_embed(x))  # b t h w dim
        u = rearrange(tokens, "b t h w c -> b c t h w")  # u = f_shw(x)
        return self.projector(u)  # (b C h w, b C t w, b C t h)

    def decode(self, z_s: torch.Tensor, z_h: torch.Tensor, z_w: torch.Tensor) -> torch.Tensor:
        """``(z_s (b, C, h, w), z_h (b, C, t, w), z_w (b, C, t, h))`` -> ``x (b, c, T, H, W)``, ``g_psi(z)``."""
        check_tensor(z_s, "z_s", "(b, c, h, w)", sizes={"c": self.cfg.latent_channels})
        v = triplane_expand(z_s, z_h, z_w)  # b 3C t h w
        tokens = self.from_latent(rearrange(v, "b c t h w -> b t h w c"))  # b t h w dim
        return self.unembed(self.decoder(tokens))  # b c T H W

    def encode_packed(self, x: torch.Tensor) -> torch.Tensor:
        """``x (b, c, T, H, W)`` -> the packed latent ``(b, C, h w + t w + t h)``."""
        return pack_planes(*self.encode(x))

    def decode_packed(self, z: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """The packed latent ``(b, C, n)`` of the plane grid ``(t, h, w)`` -> ``x (b, c, T, H, W)``."""
        return self.decode(*unpack_planes(z, grid))

    def latent_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The plane grid ``(t, h, w)`` of a ``frames x height x width`` video."""
        return self.cfg.latent_grid(frames, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``g_psi(f_phi(x))``: ``(b, c, T, H, W) -> (b, c, T, H, W)``."""
        return self.decode(*self.encode(x))
