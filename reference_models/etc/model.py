"""ETC's denoiser: an SD-style image U-Net run on the frame grid of a video (section 4.1).

ETC has no temporal layers. A video ``(b, c, t, h, w)`` is tiled into one grid image (eq. 1,
:func:`vdblocks.video_to_grid`), the spatial-temporal mixed embedding (ME, eqs. 2-4,
:class:`vdblocks.SpatialTemporalMixedEmbedding`) is added to that noisy image before any layer
(section 4.1.2), and a plain text-to-image U-Net shaped like Stable Diffusion 2.1's denoises the
whole grid (predicting the noise, the velocity or ``x_0``, as ``cfg.diffusion`` says), so spatial
attention over the grid image *is* the temporal modelling. The frame rate enters through
:class:`vdblocks.FPSEmbedding`, which shares the timestep embedding's sinusoid (section 4.2). The
predicted grid is cut back into a video (:func:`vdblocks.grid_to_video`).

The blocks follow SD 2.1 (diffusers ``UNet2DConditionModel`` with ``use_linear_projection=True``)
layer for layer, so the ``"sd21"`` preset has the same parameter tensors as SD 2.1's U-Net plus
the FPS MLP (ETC initialises its spatial modules from SD 2.1, section 5.1):

* :class:`vdblocks.ResBlock2d` in its Stable Diffusion configuration (``emb_mode="bias"``, eps
  1e-5): ``GN -> SiLU -> conv3x3 -> + Linear(SiLU(emb)) -> GN -> SiLU -> dropout -> conv3x3`` plus
  a 1x1 shortcut when the width changes;
* :class:`SpatialTransformer`: ``GN -> Linear -> [self-attn, cross-attn to the context, GEGLU
  feed-forward] x depth -> Linear`` on the ``(h w)`` tokens, residual around the whole; attention
  goes through :class:`vdblocks.Attention`, hence the vdblocks backend dispatch;
* :class:`Downsample` (stride-2 conv) / :class:`Upsample` (nearest x2 then conv); skip connections
  concatenated on the way up as in SD (one skip per down layer, plus conv_in's output).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from vdblocks.layers.embeddings import TimestepEmbedding
from vdblocks.layers.fps import FPSEmbedding
from vdblocks.layers.grid import SpatialTemporalMixedEmbedding, grid_for, grid_to_video, video_to_grid
from vdblocks.layers.norm import group_norm
from vdblocks.layers.resblock import ResBlock2d
from vdblocks.layers.transformer import Attention
from vdblocks.validation import check_positive_int, check_same_batch, check_tensor

from ..common.pretrained import PretrainedMixin
from .conditioning import ETCConditioner
from .config import ETCConfig

__all__ = [
    "GEGLUFeedForward",
    "CrossAttentionBlock",
    "SpatialTransformer",
    "Downsample",
    "Upsample",
    "UNetLayer",
    "ETCUNet",
    "ETCSystem",
]


class GEGLUFeedForward(nn.Module):
    """SD's gated-GELU feed-forward: ``Linear(dim -> 2 * mult * dim)``, ``a * GELU(g)``, ``Linear``.

    Shapes: ``(b, n, dim) -> (b, n, dim)``. (``vdblocks.FeedForward`` is the plain GELU MLP; SD 2.1's
    transformer blocks use this gated form, which the ``"sd21"`` preset must match.)
    """

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = check_positive_int(dim, "dim") * mult
        self.proj = nn.Linear(dim, 2 * hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)  # b n hidden, each
        return self.out(self.dropout(a * F.gelu(gate)))  # b n dim


class CrossAttentionBlock(nn.Module):
    """SD's ``BasicTransformerBlock``: pre-norm self-attention, cross-attention, GEGLU feed-forward.

    Shapes: x ``(b, n, dim)``, context ``(b, m, context_dim)`` -> ``(b, n, dim)``. Queries, keys
    and values have no bias (as in SD); the kernel is vdblocks' attention dispatch.
    """

    def __init__(self, dim: int, *, heads: int, dim_head: int, context_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head, qkv_bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.cross = Attention(dim, heads, dim_head, context_dim=context_dim, qkv_bias=False)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # b n dim
        x = x + self.cross(self.norm2(x), context)  # b n dim
        return x + self.ff(self.norm3(x))  # b n dim


class SpatialTransformer(nn.Module):
    """SD's spatial transformer on a feature map, with linear in/out projections (SD 2.x).

    Shapes: x ``(b, c, h, w)``, context ``(b, m, context_dim)`` -> ``(b, c, h, w)``. On an ETC
    grid image the ``(h w)`` tokens span every frame, so this self-attention is also ETC's only
    temporal mixing (section 4.1). ``self.proj_out`` is the residual output that
    :meth:`ETCUNet.init_weights` zeroes.
    """

    def __init__(
        self,
        channels: int,
        *,
        context_dim: int,
        head_channels: int = 64,
        depth: int = 1,
        norm_groups: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        if channels % head_channels:
            raise ValueError(f"expected channels divisible by head_channels={head_channels}, got {channels}")
        self.norm = group_norm(channels, norm_groups, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(
                channels,
                heads=channels // head_channels,
                dim_head=head_channels,
                context_dim=context_dim,
                dropout=dropout,
            )
            for _ in range(check_positive_int(depth, "depth"))
        )
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        tokens = self.proj_in(rearrange(self.norm(x), "b c h w -> b (h w) c"))  # b n c
        for block in self.blocks:
            tokens = block(tokens, context)  # b n c
        tokens = self.proj_out(tokens)
        return x + rearrange(tokens, "b (h w) c -> b c h w", h=height, w=width)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: ``(b, c, h, w) -> (b, c, h/2, w/2)`` (h, w even)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution: ``(b, c, h, w) -> (b, c, 2h, 2w)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNetLayer(nn.Module):
    """One U-Net step: a :class:`~vdblocks.ResBlock2d`, then a :class:`SpatialTransformer` where the level attends.

    Shapes: x ``(b, c_in, h, w)``, emb ``(b, e)``, context ``(b, m, context_dim)`` ->
    ``(b, c_out, h, w)``. The unit of gradient checkpointing.
    """

    def __init__(self, res: ResBlock2d, attn: SpatialTransformer | None = None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x, context)


class _Level(nn.Module):
    """The layers of one resolution level and the resampling that leaves it (None at the end)."""

    def __init__(self, layers: list[UNetLayer], resample: nn.Module | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.resample = resample


class ETCUNet(nn.Module, PretrainedMixin):
    """ETC's spatial-only video denoiser (sections 4.1-4.2).

    ``forward(x, timesteps, fps, context) -> prediction``:

    * ``x (b, c, t, h, w)``: the noisy video, ``c = cfg.in_channels``;
    * ``timesteps (b,)``: int or float diffusion steps;
    * ``fps (b,)``: frame rates in ``[0, cfg.max_fps]`` (0: a group of unrelated images, 120: one
      image repeated; section 4.2, eq. 6);
    * ``context (b, n, cfg.context_dim)``: the conditioner's tokens (``ETCConditioner``; pass its
      ``null_context`` for the unconditional branch);
    * returns the prediction ``(b, c, t, h, w)``: the noise, the velocity or ``x_0``, as
      ``cfg.diffusion.prediction_type`` says.

    Steps: ``grid = cfg.grid or grid_for(t)``; ``video_to_grid`` (eq. 1, empty cells zero); add the
    ME (eqs. 2-4) to the noisy grid image before ``conv_in``, as section 4.1.2 requires ("before
    any attention or convolutional modules"); ``emb = time_embed(timesteps) + fps_embed(fps)``;
    SD's down / middle / up path; ``GN -> SiLU -> conv_out``; ``grid_to_video``.

    Any frame count and frame size run without retraining (the ME has no parameters, section
    4.1.2) as long as the frame height and width are multiples of ``2 ** (levels - 1)``, so that
    every down/upsampling keeps frame borders on the pixel lattice and the up path's skips line
    up; :meth:`check_input` says so before anything runs.

    Reading of section 4.2. The FPS and timestep embeddings "are then directly added to the
    noise input of the U-Net": a ``(b, 4 * model_channels)`` vector cannot be added to a ``(b, c,
    H, W)`` image, so we add the FPS embedding to the timestep embedding, which is the
    conditioning input of every res block (the usual place for a frame-rate condition, as in
    VideoCrafter / LVDM). :meth:`init_weights` zeroes the FPS MLP's last layer, so a model built
    from SD weights starts exactly as SD and learns the frame rate from there.

    ``save_pretrained`` / ``from_pretrained`` save and load the U-Net alone (kind ``"etc_unet"``);
    sampling needs the conditioner too, which :class:`ETCSystem` holds.
    """

    pretrained_kind = "etc_unet"
    config_class = ETCConfig

    def __init__(self, cfg: ETCConfig) -> None:
        super().__init__()
        if not isinstance(cfg, ETCConfig):
            raise TypeError(f"expected an ETCConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.grad_checkpointing = False
        mc, emb_dim = cfg.model_channels, cfg.time_embed_dim

        self.mixed_embed = SpatialTemporalMixedEmbedding(cfg.in_channels, cfg.theta, order=cfg.grid_order)
        # SD: a model_channels-wide sinusoid, then Linear -> SiLU -> Linear to 4 * model_channels.
        self.time_embed = TimestepEmbedding(emb_dim, frequency_dim=mc, hidden_dim=emb_dim)
        self.fps_embed = FPSEmbedding(emb_dim, self.time_embed, max_fps=cfg.max_fps)
        # Optional global path for the condition (SDXL's pooled text embedding): mean of the context
        # tokens -> MLP -> added to the timestep embedding that every res block reads.
        self.context_embed = (
            nn.Sequential(nn.Linear(cfg.context_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if cfg.pooled_context
            else None
        )
        self.conv_in = nn.Conv2d(cfg.in_channels, mc, 3, padding=1)

        def layer(c_in: int, c_out: int, attend: bool) -> UNetLayer:
            # SD's ResnetBlock2D: the embedding added as a bias after the first conv, eps 1e-5.
            res = ResBlock2d(
                c_in,
                c_out,
                emb_dim=emb_dim,
                emb_mode="bias",
                dropout=cfg.dropout,
                norm_groups=cfg.norm_groups,
                eps=1e-5,
            )
            attn = None
            if attend:
                attn = SpatialTransformer(
                    c_out,
                    context_dim=cfg.context_dim,
                    head_channels=cfg.num_head_channels,
                    depth=cfg.transformer_depth,
                    norm_groups=cfg.norm_groups,
                )
            return UNetLayer(res, attn)

        last = cfg.num_levels - 1
        ch, skip_channels = mc, [mc]
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            layers = []
            for _ in range(cfg.num_res_blocks):
                layers.append(layer(ch, mc * mult, level in cfg.attention_levels))
                ch = mc * mult
                skip_channels.append(ch)
            down = Downsample(ch) if level != last else None
            if down is not None:
                skip_channels.append(ch)
            self.down.append(_Level(layers, down))

        # SD's middle block: res, transformer, res (the transformer is always there).
        self.mid = nn.ModuleList([layer(ch, ch, True), layer(ch, ch, False)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            layers = []
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(layer(ch + skip_channels.pop(), mc * mult, level in cfg.attention_levels))
                ch = mc * mult
            self.up.append(_Level(layers, Upsample(ch) if level != 0 else None))

        self.norm_out = group_norm(ch, cfg.norm_groups, eps=1e-5)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)
        self.init_weights()

    # ------------------------------------------------------------------ set-up

    def zero_init_modules(self) -> Iterator[nn.Module]:
        """The residual and conditioning outputs that :meth:`init_weights` zeroes.

        Every res block's ``conv2``, every SpatialTransformer's ``proj_out``, the FPS MLP's last
        layer and the pooled-context MLP's (DESIGN.md convention 6, LDM's ``zero_module``).
        """
        for module in self.modules():
            if isinstance(module, ResBlock2d):
                yield module.conv2
            elif isinstance(module, SpatialTransformer):
                yield module.proj_out
        yield self.fps_embed.mlp[-1]
        if self.context_embed is not None:
            yield self.context_embed[-1]

    def init_weights(self) -> None:
        """Start every residual branch and the FPS branch as the identity (zero their last layer).

        Other layers keep PyTorch's default init (SD's). ``conv_out`` is not zeroed: a zero
        output layer would also block every gradient below it at the first step. Right after this,
        the layers upstream of a zeroed output inside its branch get zero gradient for one step;
        the zeroed layers themselves do get gradient.
        """
        for module in self.zero_init_modules():
            nn.init.zeros_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each :class:`UNetLayer`'s activations in backward instead of storing them."""
        self.grad_checkpointing = bool(enable)

    # ------------------------------------------------------------------ checks

    def grid_for(self, num_frames: int) -> tuple[int, int]:
        """The ``(rows, cols)`` grid used for ``num_frames`` frames: ``cfg.grid`` or ``grid_for(t)``."""
        check_positive_int(num_frames, "num_frames")
        if self.cfg.grid is None:
            return grid_for(num_frames)
        rows, cols = self.cfg.grid
        if num_frames > rows * cols:
            raise ValueError(
                f"expected at most rows*cols = {rows * cols} frames for the configured grid "
                f"({rows}, {cols}), got t={num_frames}"
            )
        return rows, cols

    def check_input(self, x_shape: Sequence[int] | torch.Size | torch.Tensor) -> tuple[int, int]:
        """Raise ``ValueError`` if the net cannot take a video of this shape; return its grid.

        ``x_shape`` is ``(b, c, t, h, w)`` (or one unbatched clip ``(c, t, h, w)``, as a dataset item
        holds it; a tensor stands for its shape). Needs ``c = cfg.in_channels`` and frame ``h``,
        ``w`` multiples of ``2 ** (levels - 1)``; the trainer calls this as its preflight.
        """
        shape = tuple(x_shape.shape if isinstance(x_shape, torch.Tensor) else x_shape)
        if len(shape) not in (4, 5) or not all(isinstance(s, int) and s > 0 for s in shape):
            raise ValueError(f"expected a video shape (b, c, t, h, w) of positive sizes, got {shape}")
        c, t, h, w = shape[-4:]
        if c != self.cfg.in_channels:
            raise ValueError(f"expected x of shape (b, c, t, h, w) with c={self.cfg.in_channels}, got {shape}")
        m = self.cfg.size_multiple
        if h % m or w % m:
            raise ValueError(
                f"expected x of shape (b, c, t, h, w) with frame height and width divisible by "
                f"2**(levels-1) = {m} ({self.cfg.num_levels} levels), got h={h}, w={w} in {shape}"
            )
        return self.grid_for(t)

    def _check_forward(self, x, timesteps, fps, context) -> tuple[int, int]:
        check_tensor(x, "x", "(b, c, t, h, w)", sizes={"c": self.cfg.in_channels})
        grid = self.check_input(x.shape)
        for name, value in (("timesteps", timesteps), ("fps", fps)):
            check_tensor(value, name, "(b,)", floating=False)
            check_same_batch(x, "x", value, name)
        if context is None:
            raise TypeError(
                f"expected context of shape (b, n, context_dim) with context_dim={self.cfg.context_dim}; "
                "pass ETCConditioner.null_context(b) for the unconditional model"
            )
        check_tensor(context, "context", "(b, n, context_dim)", sizes={"context_dim": self.cfg.context_dim})
        check_same_batch(x, "x", context, "context")
        return grid

    # ------------------------------------------------------------------ forward

    def _run(self, layer: UNetLayer, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, h, emb, context, use_reentrant=False)
        return layer(h, emb, context)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        fps: torch.Tensor,
        context: torch.Tensor,
    ) -> torch.Tensor:
        grid = self._check_forward(x, timesteps, fps, context)
        t = x.shape[2]
        image = video_to_grid(x, grid, order=self.cfg.grid_order)  # b c (rows h) (cols w), eq. 1
        image = self.mixed_embed(image, grid)  # + ME before any layer, eqs. 2-4
        emb = self.time_embed(timesteps) + self.fps_embed(fps)  # b e, section 4.2
        context = context.to(image.dtype)
        if self.context_embed is not None:
            emb = emb + self.context_embed(context.mean(dim=1))  # b e, pooled condition

        h = self.conv_in(image)  # b mc H W
        skips = [h]
        for level in self.down:
            for layer in level.layers:
                h = self._run(layer, h, emb, context)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)  # b c H/2 W/2
                skips.append(h)
        for layer in self.mid:
            h = self._run(layer, h, emb, context)
        for level in self.up:
            for layer in level.layers:
                h = self._run(layer, torch.cat([h, skips.pop()], dim=1), emb, context)
            if level.resample is not None:
                h = level.resample(h)  # b c 2H 2W
        out = self.conv_out(F.silu(self.norm_out(h)))  # b c (rows h) (cols w)
        return grid_to_video(out, grid, t, order=self.cfg.grid_order)  # b c t h w


class ETCSystem(nn.Module, PretrainedMixin):
    """The U-Net and its conditioner as one module: what the trainer optimises, averages (EMA)
    and checkpoints (parameters ``unet.*`` and ``conditioner.*``).

    ``forward(x (b, c, t, h, w), timesteps (b,), fps (b,), labels=None, captions=None,
    cond_dropout=0.0, generator=None) -> prediction (b, c, t, h, w)``: the context is built inside the
    forward, so under DDP the text encoder's gradients are synchronised with the U-Net's.
    ``cond_dropout`` replaces each item's context by the null context with that probability
    (classifier-free guidance training), drawing from ``generator``.

    ``save_pretrained`` / ``from_pretrained`` (kind ``"etc"``) save and load U-Net and conditioner
    together; a system built with an external ``text_encoder`` is loaded with
    ``ETCSystem.from_pretrained(path, text_encoder=...)`` (only its trainable projection is stored).
    """

    pretrained_kind = "etc"
    config_class = ETCConfig

    def __init__(self, cfg: ETCConfig, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.unet = ETCUNet(cfg)
        self.conditioner = ETCConditioner(cfg, text_encoder)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        fps: torch.Tensor,
        labels: torch.Tensor | None = None,
        captions: Sequence[str] | None = None,
        *,
        cond_dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        context = self.conditioner(labels=labels, captions=captions)  # b n d
        if cond_dropout > 0:
            null = self.conditioner.null_context(context.shape[0])  # b n d
            context = self.conditioner.drop(context, null, cond_dropout, generator)
        return self.unet(x, timesteps, fps, context)  # b c t h w
