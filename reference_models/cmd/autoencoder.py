"""CMD's autoencoder (section 3.2, eqs. 3-6, Table 5): a video -> one content frame + motion latents.

Encoder ``f_phi = (f_B, f_I, f_M)``:

* ``f_B``: a TimeSformer (:class:`~vdblocks.layers.VideoTransformer`, divided space-time attention)
  on ``1 x p x p`` patches of the video ``x (b, C, L, H, W)``, giving ``u (b, C', L, H', W')`` with
  ``H' = H / p``, ``W' = W / p``;
* ``f_I``: :class:`~vdblocks.layers.ContentFrameHead`, the content frame
  ``x_bar = sum_l x_l * softmax_l(f_I(u))_l`` (eq. 3), ``(b, C, H, W)``;
* ``f_M``: :class:`~vdblocks.layers.MotionLatentHead`, ``z_x = f_M(mean_W' u)`` ``(b, D, L, H')`` and
  ``z_y = f_M(mean_H' u)`` ``(b, D, L, W')`` (eq. 4).

Decoder ``g = (g_I, g_M, g_B)``: ``g_I`` embeds the content frame with a ``p x p`` patch convolution
to ``v_t (b, C', H', W')``, ``g_M`` (a 1x1 convolution ``D -> C'``, shared by both latents as eq. 5
writes one ``g_M``) gives ``v_x (b, C', L, H')`` and ``v_y (b, C', L, W')``; eq. 6 sums them per
``(l, h, w)``: ``v_lhw = v_t_hw + v_x_lh + v_y_lw``, and ``g_B``, the same kind of TimeSformer,
reconstructs the video through a per-token linear ``C' -> C p p`` (:class:`~vdblocks.layers.VideoPatchUnembed`).

Readings taken. B.3 says "a single convolutional layer as pre- and post-layers at the end of the
encoder and at the beginning of the decoder": we take the patch embedding as the encoder's pre-layer,
the two heads as its post-layers, ``g_I``/``g_M`` as the decoder's pre-layers and the unembedding as
its post-layer. The content-frame logits are per pixel (``f_I`` maps to ``C x L x H x W``, section
3.2) unless ``ae_pixel_weights=False``.

Image latents. The paper runs CMD on Stable Diffusion latents (4 channels, 1/8 resolution).
:class:`ImageLatentCodec` wraps any frozen image autoencoder with diffusers' ``AutoencoderKL``
interface; :class:`CMDAutoencoder` holds it outside its parameters (it is neither trained nor
saved in CMD checkpoints) and :meth:`CMDAutoencoder.encode_video` / :meth:`decode_video` go from
pixels to CMD latents and back.

The motion latents travel packed as one tensor ``z (b, D, L, H' + W')`` (:func:`pack_motion`,
:func:`unpack_motion`), the shape the motion diffusion model denoises.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import nn

from vdblocks.layers.content_frame import ContentFrameHead, MotionLatentHead
from vdblocks.layers.video_transformer import (
    VideoPatchEmbed,
    VideoPatchUnembed,
    VideoTransformer,
)
from vdblocks.validation import check_positive_int, check_tensor

from ..common.pretrained import PretrainedMixin
from .config import CMDConfig

__all__ = ["CMDAutoencoder", "CMDLatents", "ImageLatentCodec", "pack_motion", "unpack_motion"]


def pack_motion(z_x: torch.Tensor, z_y: torch.Tensor) -> torch.Tensor:
    """``z_x (b, D, L, H'), z_y (b, D, L, W') -> z (b, D, L, H' + W')`` (concatenated on the last axis)."""
    check_tensor(z_x, "z_x", "(b, D, L, h)")
    check_tensor(z_y, "z_y", "(b, D, L, w)", sizes={"b": z_x.shape[0], "D": z_x.shape[1], "L": z_x.shape[2]})
    return torch.cat([z_x, z_y], dim=-1)  # b D L (h + w)


def unpack_motion(z: torch.Tensor, latent_height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_motion`: ``z (b, D, L, H' + W') -> (z_x (b, D, L, H'), z_y (b, D, L, W'))``."""
    check_positive_int(latent_height, "latent_height")
    check_tensor(z, "z", "(b, D, L, h + w)")
    if z.shape[-1] <= latent_height:
        raise ValueError(
            f"expected z of shape (b, D, L, h + w) with h = {latent_height} and w >= 1, got {tuple(z.shape)}"
        )
    return z[..., :latent_height], z[..., latent_height:]


class CMDLatents(tuple):
    """``(content (b, C, H, W), z_x (b, D, L, H'), z_y (b, D, L, W'))`` with names, from
    :meth:`CMDAutoencoder.encode`; ``weights (b, C, L, H, W)`` holds eq. 3's softmax weights."""

    content: torch.Tensor
    z_x: torch.Tensor
    z_y: torch.Tensor
    weights: torch.Tensor

    def __new__(cls, content: torch.Tensor, z_x: torch.Tensor, z_y: torch.Tensor, weights: torch.Tensor):
        self = super().__new__(cls, (content, z_x, z_y))
        self.content, self.z_x, self.z_y, self.weights = content, z_x, z_y, weights
        return self

    @property
    def motion(self) -> torch.Tensor:
        """``z (b, D, L, H' + W')``, the packed motion latents (:func:`pack_motion`)."""
        return pack_motion(self.z_x, self.z_y)


def _first(output: Any, attribute: str) -> Any:
    """``output.attribute`` for diffusers outputs, ``output[0]`` for ``return_dict=False`` tuples."""
    if hasattr(output, attribute):
        return getattr(output, attribute)
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


class ImageLatentCodec(nn.Module):
    """A frozen image autoencoder applied frame by frame: pixels ``(b, 3, L, 8H, 8W) <-> (b, 4, L, H, W)``.

    ``vae`` is any module with diffusers ``AutoencoderKL``'s interface: ``encode(x)`` returning an
    object with ``latent_dist`` (a diagonal Gaussian with ``mode()``/``sample()``) or a tensor, and
    ``decode(z)`` returning an object with ``.sample`` or a tensor. As in diffusers' pipelines the
    latents are ``(mode - shift_factor) * scaling_factor`` (``vae.config.scaling_factor``, 0.18215 for
    SD 1.x/2.x; ``shift_factor`` only where the config has one, e.g. SD3) and are mapped back before
    ``decode``. ``sample_posterior=True`` draws from ``latent_dist`` instead of taking its mode.
    The VAE is put in eval mode with ``requires_grad=False``; encode/decode run under ``no_grad``.
    """

    def __init__(
        self,
        vae: nn.Module,
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        sample_posterior: bool = False,
    ) -> None:
        super().__init__()
        if not (callable(getattr(vae, "encode", None)) and callable(getattr(vae, "decode", None))):
            raise TypeError(f"expected an image autoencoder with encode() and decode(), got {type(vae).__name__}")
        config = getattr(vae, "config", None)
        if scaling_factor is None:
            scaling_factor = getattr(config, "scaling_factor", None) or 1.0
        if shift_factor is None:
            shift_factor = getattr(config, "shift_factor", None) or 0.0
        self.scaling_factor, self.shift_factor = float(scaling_factor), float(shift_factor)
        self.sample_posterior = bool(sample_posterior)
        self.vae = vae.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> ImageLatentCodec:
        # Frozen: stays in eval mode (no dropout) whatever the owner's mode.
        return super().train(False)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(b, c, L, H, W)`` pixels in [-1, 1] -> ``(b, c_lat, L, H / f, W / f)`` scaled latents."""
        check_tensor(video, "video", "(b, c, L, H, W)")
        b = video.shape[0]
        frames = rearrange(video, "b c l h w -> (b l) c h w")
        dist = _first(self.vae.encode(frames), "latent_dist")
        if isinstance(dist, torch.Tensor):
            latents = dist
        else:
            latents = dist.sample(generator) if self.sample_posterior else dist.mode()
        latents = (latents - self.shift_factor) * self.scaling_factor  # (b l) c_lat h w
        return rearrange(latents, "(b l) c h w -> b c l h w", b=b)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode`: ``(b, c_lat, L, h, w) -> (b, c, L, h f, w f)`` pixels."""
        check_tensor(latents, "latents", "(b, c, L, h, w)")
        b = latents.shape[0]
        frames = rearrange(latents, "b c l h w -> (b l) c h w") / self.scaling_factor + self.shift_factor
        pixels = _first(self.vae.decode(frames), "sample")  # (b l) c H W
        return rearrange(pixels, "(b l) c h w -> b c l h w", b=b)


class CMDAutoencoder(nn.Module, PretrainedMixin):
    """CMD's video autoencoder (section 3.2, eqs. 3-6); see the module docstring.

    Shapes (``p = cfg.ae_patch``, ``D = cfg.motion_channels``, any ``L``, ``H``, ``W`` with ``p | H, W``):

    * :meth:`encode`: ``x (b, C, L, H, W) -> CMDLatents(content (b, C, H, W), z_x (b, D, L, H/p),
      z_y (b, D, L, W/p))``;
    * :meth:`decode`: ``content, z_x, z_y -> x_hat (b, C, L, H, W)``;
    * ``forward(x) -> (x_hat, latents)``.

    ``image_codec`` (optional, an :class:`ImageLatentCodec` or a diffusers ``AutoencoderKL``) is kept
    out of the parameters and the state dict: :meth:`encode_video`/:meth:`decode_video` wrap it.
    ``save_pretrained`` / ``from_pretrained`` (kind ``"cmd_ae"``) store the autoencoder without the
    codec; pass it again with ``CMDAutoencoder.from_pretrained(path, image_codec=...)``.
    """

    pretrained_kind = "cmd_ae"
    config_class = CMDConfig

    def __init__(self, cfg: CMDConfig, image_codec: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        p, dim = cfg.ae_patch, cfg.ae_dim
        # Encoder f_phi.
        self.patch_embed = VideoPatchEmbed(cfg.channels, dim, (1, p, p))
        self.encoder = VideoTransformer(dim, cfg.ae_depth, cfg.ae_heads, cfg.ae_dim_head, cfg.mlp_ratio)
        self.content_head = ContentFrameHead(dim, cfg.channels, patch_size=p if cfg.ae_pixel_weights else None)
        self.motion_head = MotionLatentHead(dim, cfg.motion_channels)
        # Decoder g.
        self.content_embed = nn.Conv2d(cfg.channels, dim, kernel_size=p, stride=p)  # g_I
        self.motion_embed = nn.Conv2d(cfg.motion_channels, dim, kernel_size=1)  # g_M
        self.decoder = VideoTransformer(dim, cfg.ae_depth, cfg.ae_heads, cfg.ae_dim_head, cfg.mlp_ratio)
        self.unembed = VideoPatchUnembed(dim, cfg.channels, (1, p, p))
        self.init_weights()
        self.set_image_codec(image_codec)

    def init_weights(self) -> None:
        """Xavier-uniform linears (ViT/DiT); the content logits start at 0, so the first content frame
        is the plain mean of the frames."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.content_head.to_logits.weight)
        nn.init.zeros_(self.content_head.to_logits.bias)

    # The codec is frozen and external: hide it from parameters(), state_dict() and the optimizer,
    # but let .to() / .half() move it with the model.
    def set_image_codec(self, codec: nn.Module | None) -> None:
        """Use ``codec`` (an :class:`ImageLatentCodec`, a diffusers ``AutoencoderKL`` or None) for
        :meth:`encode_video` / :meth:`decode_video`."""
        if codec is not None and not isinstance(codec, ImageLatentCodec):
            codec = ImageLatentCodec(codec)
        self.__dict__["_image_codec"] = codec

    @property
    def image_codec(self) -> ImageLatentCodec | None:
        return self.__dict__.get("_image_codec")

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.image_codec is not None:
            self.image_codec._apply(fn)
        return self

    def check_input(self, shape: tuple[int, ...] | torch.Size) -> None:
        """Raise ``ValueError`` unless ``(b, C, L, H, W)`` (or one clip ``(C, L, H, W)``) fits the patch."""
        shape = tuple(shape)
        p, c = self.cfg.ae_patch, self.cfg.channels
        if len(shape) not in (4, 5) or shape[-4] != c or shape[-2] % p or shape[-1] % p:
            raise ValueError(
                f"expected x of shape (b, C, L, H, W) with C={c} and H, W divisible by ae_patch={p}, got {shape}"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The base network ``f_B``: ``x (b, C, L, H, W) -> u (b, C', L, H', W')``."""
        check_tensor(x, "x", "(b, C, L, H, W)", sizes={"C": self.cfg.channels})
        self.check_input(x.shape)
        u = self.encoder(self.patch_embed(x))  # b L h w C'
        return rearrange(u, "b l h w c -> b c l h w")

    def encode(self, x: torch.Tensor) -> CMDLatents:
        """Eqs. 3-4: ``x (b, C, L, H, W) -> (content (b, C, H, W), z_x (b, D, L, H'), z_y (b, D, L, W'))``."""
        u = self.features(x)  # b C' L h w
        content, weights = self.content_head(x, u)  # b C H W, b C L H W
        z_x, z_y = self.motion_head(u)  # b D L h, b D L w
        return CMDLatents(content, z_x, z_y, weights)

    def decode(self, content: torch.Tensor, z_x: torch.Tensor, z_y: torch.Tensor) -> torch.Tensor:
        """Eqs. 5-6 and ``g_B``: ``content (b, C, H, W), z_x (b, D, L, H'), z_y (b, D, L, W') -> (b, C, L, H, W)``."""
        cfg = self.cfg
        check_tensor(content, "content", "(b, C, H, W)", sizes={"C": cfg.channels})
        b, _, height, width = content.shape
        if height % cfg.ae_patch or width % cfg.ae_patch:
            raise ValueError(
                f"expected content of shape (b, C, H, W) with H, W divisible by ae_patch={cfg.ae_patch}, "
                f"got {tuple(content.shape)}"
            )
        h, w = height // cfg.ae_patch, width // cfg.ae_patch
        check_tensor(z_x, "z_x", "(b, D, L, h)", sizes={"b": b, "D": cfg.motion_channels, "h": h})
        check_tensor(z_y, "z_y", "(b, D, L, w)", sizes={"b": b, "D": cfg.motion_channels, "L": z_x.shape[2], "w": w})
        v_t = self.content_embed(content)  # b C' h w
        v_x = self.motion_embed(z_x)  # b C' L h
        v_y = self.motion_embed(z_y)  # b C' L w
        v = v_t[:, :, None] + v_x[..., None] + v_y[:, :, :, None, :]  # b C' L h w, eq. 6
        out = self.decoder(rearrange(v, "b c l h w -> b l h w c"))  # b L h w C'
        return self.unembed(out)  # b C L H W

    def decode_motion(self, content: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` from packed motion latents ``z (b, D, L, H' + W')``."""
        z_x, z_y = unpack_motion(z, content.shape[-2] // self.cfg.ae_patch)
        return self.decode(content, z_x, z_y)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, CMDLatents]:
        """``x (b, C, L, H, W) -> (reconstruction (b, C, L, H, W), latents)``."""
        latents = self.encode(x)
        return self.decode(latents.content, latents.z_x, latents.z_y), latents

    # ----------------------------------------------------------------- pixels <-> CMD input space

    def to_input(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels -> what :meth:`encode` takes: the image codec's latents, or the pixels themselves."""
        return video if self.image_codec is None else self.image_codec.encode(video)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_input` (the codec's decoder, or the identity)."""
        return x if self.image_codec is None else self.image_codec.decode(x)

    def encode_video(self, video: torch.Tensor) -> CMDLatents:
        """Pixels ``(b, 3, L, H_px, W_px)`` -> CMD latents, through the image codec when there is one."""
        return self.encode(self.to_input(video))

    def decode_video(self, content: torch.Tensor, z_x: torch.Tensor, z_y: torch.Tensor) -> torch.Tensor:
        """CMD latents -> pixels, through the image codec's decoder when there is one."""
        return self.to_pixels(self.decode(content, z_x, z_y))
