"""A custom video diffusion model that mixes blocks from four papers, trained and sampled on CPU.

The model, "content-motion planes" (see ``docs/custom-architecture.md`` for the diagram):

* **Stage 1, an autoencoder** (CMD's design, section 3.2, with PVDM's projections): a video
  transformer encodes the clip ``x (b, c, t, H, W)`` into features ``u (b, d, t, h, w)``;
  CMD's :class:`~vdblocks.ContentFrameHead` turns them into a *content frame* (eq. 3: a per-pixel
  softmax-over-time mix of the frames, so it is an image) and two of PVDM's
  :class:`~vdblocks.AxisProjector` s into the *motion planes* ``z_h (b, C, t, w)`` and
  ``z_w (b, C, t, h)`` (PVDM section 3.2). The decoder embeds the three (CMD eqs. 5-6 through
  :func:`~vdblocks.triplane_expand`) and a second video transformer rebuilds the clip.
* **Stage 2, one denoiser for the three latents** (PVDM section 3.2, "latent diffusion model": a
  single 2D U-Net, shared by the planes, with attention over the tokens of all planes at once for
  their joint distribution: :class:`~vdblocks.JointPlaneAttention`), built EVDM-L-style from
  :class:`~vdblocks.BottleneckResidualPathway` s (channel split, grouped shortcut with channel
  shuffle, bottleneck ratio 8, temporal enhancement), the joint attention running EVDM's
  :class:`~vdblocks.MixedSelfAttention` (eq. 14: softmax or FAVOR+ by token count), and
  conditioned on the timestep plus ETC's :class:`~vdblocks.FPSEmbedding` (section 4.2), which
  shares the timestep's sinusoid. It predicts the velocity, trained with
  :func:`vdblocks.diffusion.diffusion_loss` and sampled with :func:`vdblocks.diffusion.sample_ddim`.

Everything else comes from ``reference_models.common``: moving shapes (at several frame rates),
the training loop (AdamW, EMA, checkpoints that hold the config), video writing. On a 2-core CPU
the defaults (grayscale clips of 8 frames of 16x16) train both stages, sample and score the samples
with the shapes probe in about four minutes::

    python examples/custom_architecture.py                        # moving shapes, CPU
    python examples/custom_architecture.py --fps 2 8 30 --seed 1  # sample at other frame rates
    python examples/custom_architecture.py --set channels=3       # coloured shapes (harder)
    python examples/custom_architecture.py --device cuda --ae-steps 4000 --steps 20000 --set size=32

It prints where the sample videos are: ``<out>/denoiser/samples/fps<F>_<i>.mp4``, with a frame grid
``fps<F>_grid.png`` (one row per video) and the sampled content frames ``fps<F>_content.png``.

Last, the run measures itself with the moving-shapes probe (``reference_models.common.probe``):
``--probe-clips`` more clips (32 by default, 0 skips) are sampled the same way at one training rate
(8 fps when it is one of ``fps_choices``, else the training rate nearest to it) and scored against the
probe built for the training data. The model is unconditional apart from the frame rate, so the
figures are the fraction of clips showing exactly one object, the Frechet distance of probe features to
as many real clips (next to the real-vs-real floor) and the share of each shape kind the probe reads
(next to the data's, which draws every kind equally often). They are printed and written to
``<out>/probe.json``, with the first 16 clips (upscaled 4x) in ``<out>/probe_grid.png``. The probe
trains once, in seconds, and is cached (see its module docstring)::

    python examples/custom_architecture.py --probe-clips 64       # score more clips
    python examples/custom_architecture.py --probe-clips 0        # skip the probe
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import einops
import torch
import torch.nn.functional as F
from einops import pack, rearrange, unpack
from torch import nn
from torch.utils.data import Dataset

from reference_models.common.cli import parse_override
from reference_models.common.config import (
    ConfigBase,
    check_channel_mult,
    check_config_ints,
)
from reference_models.common.data import MovingShapes
from reference_models.common.distributed import resolve_device
from reference_models.common.ema import unwrap_model
from reference_models.common.probe import ShapesProbe
from reference_models.common.trainer import TrainConfig, train
from reference_models.common.video_io import save_frame_grid, write_samples
from vdblocks import (
    AxisProjector,
    BottleneckResidualPathway,
    ContentFrameHead,
    FPSEmbedding,
    JointPlaneAttention,
    MixedSelfAttention,
    ScaleShiftGroupNorm,
    TimestepEmbedding,
    VideoPatchEmbed,
    VideoPatchUnembed,
    VideoTransformer,
    group_norm,
    triplane_expand,
)
from vdblocks.diffusion import DiffusionSpec, diffusion_loss, sample_ddim
from vdblocks.validation import check_tensor

__all__ = [
    "ContentMotionAutoencoder",
    "CustomConfig",
    "LatentClips",
    "LatentLayout",
    "PlaneDenoiser",
    "build_parser",
    "encode_dataset",
    "main",
    "make_sample_fn",
    "probe_rate",
    "probe_samples",
    "sample_clips",
]

PLANES = ("content", "z_h", "z_w")
PROBE_FPS = 8.0
"""The frame rate the probe's clips are sampled at when it is a training rate (see :func:`probe_rate`)."""


# --------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CustomConfig(ConfigBase):
    """Everything that defines the two stages; saved in both stages' checkpoints.

    Video: ``channels`` (1 or 3), ``frames``, ``size`` (square frames), ``fps_choices`` (the
    training rates, drawn per clip). Autoencoder: ``patch`` (``h = size / patch``), ``ae_dim``,
    ``ae_depth`` (divided space-time blocks in encoder and decoder each), ``ae_heads``,
    ``motion_channels`` (``C`` of the motion planes), ``projector_depth``. Denoiser:
    ``model_channels``, ``channel_mult``, ``bottleneck_ratio`` (EVDM's delta, 8 for EVDM-L),
    ``head_channels``, ``attention_threshold`` (lambda of EVDM eq. 14), ``emb_dim``, ``max_fps``.
    Diffusion: ``diffusion``, a :class:`~vdblocks.diffusion.DiffusionSpec`: 1000 cosine steps, the
    velocity predicted (a model trained for minutes gets ``x_0`` far better from ``v`` than from
    ``eps``, see the ETC config's docstring), no clipping (the latents are standardised, not
    bounded by 1).
    """

    channels: int = 1
    frames: int = 8
    size: int = 16
    fps_choices: tuple[float, ...] = (4.0, 8.0, 16.0)
    patch: int = 2
    ae_dim: int = 32
    ae_depth: int = 1
    ae_heads: int = 2
    motion_channels: int = 4
    projector_depth: int = 1
    latent_noise: float = 0.1
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2)
    bottleneck_ratio: int = 8
    head_channels: int = 32
    attention_threshold: float = 2.0
    emb_dim: int = 128
    max_fps: float = 120.0
    diffusion: DiffusionSpec = DiffusionSpec(schedule="cosine", prediction_type="v_prediction", clip_sample=False)

    _tuple_fields: ClassVar[tuple[str, ...]] = ("fps_choices", "channel_mult")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config_ints(
            self,
            (
                "channels",
                "frames",
                "size",
                "patch",
                "ae_dim",
                "ae_depth",
                "ae_heads",
                "motion_channels",
                "projector_depth",
                "model_channels",
                "bottleneck_ratio",
                "head_channels",
                "emb_dim",
            ),
        )
        check_channel_mult(self.channel_mult)
        if self.channels not in (1, 3):
            raise ValueError(f"expected channels in (1, 3), got {self.channels}")
        if self.size % self.patch:
            raise ValueError(f"expected size divisible by patch, got size={self.size}, patch={self.patch}")
        # Every plane (size x size, frames x size/patch) is halved len(channel_mult) - 1 times.
        step = 2 ** (len(self.channel_mult) - 1)
        for name, value in (("frames", self.frames), ("size / patch", self.size // self.patch)):
            if value % step:
                raise ValueError(f"expected {name} = {value} divisible by {step} (2 ** (levels - 1))")
        if not (isinstance(self.latent_noise, (int, float)) and self.latent_noise >= 0):
            raise ValueError(f"expected latent_noise >= 0, got {self.latent_noise!r}")
        if not self.fps_choices or not all(0 < f <= self.max_fps for f in self.fps_choices):
            raise ValueError(f"expected fps_choices in (0, max_fps={self.max_fps}], got {self.fps_choices}")

    @property
    def latent_size(self) -> int:
        """``h = w = size / patch``, the side of the autoencoder's token grid."""
        return self.size // self.patch


# ---------------------------------------------------------------------------- stage 1: autoencoder


class ContentMotionAutoencoder(nn.Module):
    """CMD's autoencoder with PVDM's projections for the motion latents.

    Shapes: ``encode(x (b, c, t, H, W)) -> (content (b, c, H, W), z_h (b, C, t, w), z_w (b, C, t, h))``
    with ``h = H / p``, ``w = W / p``; ``decode`` inverts it; ``forward`` is the reconstruction.

    Encoder (CMD eqs. 3-4): ``u = f_B(x)`` (patch embedding + divided space-time transformer),
    ``content = sum_t x_t * softmax_t(f_I(u))_t`` (:class:`~vdblocks.ContentFrameHead`, per-pixel
    weights) and, in place of CMD's averaged projections (eq. 4), PVDM's learned ones: ``z_h`` has
    one code per ``(t, w)`` read by a transformer along ``h``, ``z_w`` one per ``(t, h)`` along ``w``
    (:meth:`~vdblocks.AxisProjector.project`); both end in ``tanh``. The content frame takes the
    place of PVDM's third plane ``z_s``: it is the "what", the planes are the "where, when".

    Decoder (CMD eqs. 5-6): each latent is embedded to the width ``d`` (``g_I``: a patch-size
    convolution of the content frame onto the ``h x w`` grid; ``g_h``, ``g_w``: 1x1 convolutions
    of the planes, one per plane where CMD shares one ``g_M`` between ``z_x`` and ``z_y``), the
    three are broadcast and added, ``v_thw = g_I(content)_hw + g_h(z_h)_tw + g_w(z_w)_th``
    (:func:`~vdblocks.triplane_expand` with ``combine="sum"``), and ``g_B``, a video transformer
    like ``f_B`` (CMD: "the same architecture"), rebuilds the clip, then an unpatchify. Two readings
    that looked equivalent stalled short runs at "every frame is the content frame" (a static
    video, the mean-frame error): adding the content frame to the output as a residual, and PVDM's
    concatenation ``[g_I(content), z_h, z_w]`` followed by one linear map, where the few motion
    channels start with a small share of the weights. Embedding each plane to ``d`` first gives
    motion an equal say from the first step.
    """

    def __init__(
        self,
        channels: int,
        dim: int = 64,
        motion_channels: int = 4,
        patch: int = 2,
        depth: int = 1,
        heads: int = 4,
        projector_depth: int = 1,
    ) -> None:
        super().__init__()
        self.channels, self.motion_channels, self.patch = channels, motion_channels, patch
        dim_head = dim // heads
        patch3d = (1, patch, patch)
        self.f_B = nn.Sequential(
            VideoPatchEmbed(channels, dim, patch3d), VideoTransformer(dim, depth, heads=heads, dim_head=dim_head)
        )
        self.f_I = ContentFrameHead(dim, channels, patch_size=patch)
        self.f_h = AxisProjector(dim, motion_channels, depth=projector_depth, heads=heads, dim_head=dim_head)
        self.f_w = AxisProjector(dim, motion_channels, depth=projector_depth, heads=heads, dim_head=dim_head)
        self.g_I = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)  # one token per patch
        self.g_h = nn.Conv2d(motion_channels, dim, kernel_size=1)
        self.g_w = nn.Conv2d(motion_channels, dim, kernel_size=1)
        self.g_B = VideoTransformer(dim, depth, heads=heads, dim_head=dim_head)
        self.to_pixels = VideoPatchUnembed(dim, channels, patch3d)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_tensor(x, "x", "(b, c, t, H, W)", sizes={"c": self.channels})
        u = rearrange(self.f_B(x), "b t h w d -> b d t h w")  # b d t h w
        content, _ = self.f_I(x, u)  # b c H W
        return content, self.f_h.project(u, "h"), self.f_w.project(u, "w")  # b c H W, b C t w, b C t h

    def decode(self, content: torch.Tensor, z_h: torch.Tensor, z_w: torch.Tensor) -> torch.Tensor:
        check_tensor(content, "content", "(b, c, H, W)", sizes={"c": self.channels})
        v = triplane_expand(self.g_I(content), self.g_h(z_h), self.g_w(z_w), combine="sum")  # b d t h w, eq. 6
        return self.to_pixels(self.g_B(rearrange(v, "b d t h w -> b t h w d")))  # b c t H W

    def forward(
        self, x: torch.Tensor, latent_noise: float = 0.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The reconstruction; ``latent_noise > 0`` decodes ``latent + latent_noise * N(0, 1)``
        instead (training only), so the decoder learns to absorb the small errors a diffusion
        sample's latents carry rather than turn them into speckle and flicker (a cheap stand-in
        for the KL term of LDM's autoencoder)."""
        latents = self.encode(x)
        if latent_noise > 0:
            latents = [z + latent_noise * _randn_like(z, generator) for z in latents]
        return self.decode(*latents)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    draw = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=draw, dtype=x.dtype).to(x.device)


# ------------------------------------------------------------------------------- latent layout


class LatentLayout:
    """The three latents of one clip flattened into one vector, so that the model-independent
    diffusion code (``diffusion_loss``, ``sample_ddim``: tensors ``(b, ...)``) sees one tensor.

    ``pack([content (b, c, H, W), z_h (b, C, t, w), z_w (b, C, t, h)]) -> (b, N)`` with
    ``N = c H W + C t w + C t h``; ``unpack`` inverts it. On the way in each plane is standardised,
    ``(p - shift) / scale`` with one mean and one standard deviation per plane measured on the
    training latents (LDM's rescaling to unit variance, plus centring: the content frame of
    shapes on black has a mean near -0.8), so the noise schedule treats every plane alike;
    ``unpack`` undoes it. ``standardized=True`` skips that step (the denoiser works in those units).
    """

    def __init__(
        self, cfg: CustomConfig, shift: Sequence[float] = (0.0,) * 3, scale: Sequence[float] = (1.0,) * 3
    ) -> None:
        h = cfg.latent_size
        self.shapes = [
            (cfg.channels, cfg.size, cfg.size),
            (cfg.motion_channels, cfg.frames, h),
            (cfg.motion_channels, cfg.frames, h),
        ]
        self.shift = tuple(float(s) for s in shift)
        self.scale = tuple(float(s) for s in scale)
        self.numel = sum(math.prod(s) for s in self.shapes)

    def pack(self, planes: Sequence[torch.Tensor], standardized: bool = False) -> torch.Tensor:
        if not standardized:
            planes = [(p - m) / s for p, m, s in zip(planes, self.shift, self.scale)]
        return pack(list(planes), "b *")[0]  # b N

    def unpack(self, z: torch.Tensor, standardized: bool = False) -> list[torch.Tensor]:
        check_tensor(z, "z", "(b, n)", sizes={"n": self.numel})
        planes = unpack(z, [torch.Size(s) for s in self.shapes], "b *")
        return planes if standardized else [p * s + m for p, m, s in zip(planes, self.shift, self.scale)]


# ------------------------------------------------------------------------------ stage 2: denoiser


def _joint_attention(channels: int, head_channels: int, threshold: float) -> JointPlaneAttention:
    """PVDM's attention over the tokens of all planes at once (section 3.2), with EVDM's mixed kernel:
    softmax or FAVOR+ by the joint token count ``sum_i h_i w_i`` (eq. 14). No plane positions: the
    plane embedding in the conditioning and the convolutions tell the planes and places apart."""
    heads = max(1, channels // head_channels)
    return JointPlaneAttention(channels, heads, channels // heads, attention="mixed", threshold=threshold)


def _brp(c_in: int, c_out: int, emb_dim: int, bottleneck_ratio: int) -> BottleneckResidualPathway:
    """EVDM-L's block (Table 1): channel split, grouped shortcut + channel shuffle, temporal enhancement."""
    return BottleneckResidualPathway(
        c_in,
        c_out,
        emb_dim,
        bottleneck_ratio=bottleneck_ratio,
        channel_split=True,
        shortcut="group_shuffle",
        shortcut_groups=4,
        project_shortcut=c_in != c_out,
    )


def _by_size(fn, xs: Sequence[torch.Tensor], *per_plane: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``fn`` on every plane, with the planes of one spatial size stacked into one batch (the
    weights are shared, so this is the same computation in fewer, larger calls)."""
    out: list[torch.Tensor | None] = [None] * len(xs)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault(tuple(x.shape[2:]), []).append(i)
    for index in groups.values():
        args = [torch.cat([a[i] for i in index]) for a in (xs, *per_plane)]  # (n b) ...
        for i, y in zip(index, fn(*args).chunk(len(index))):
            out[i] = y
    return out  # type: ignore[return-value]


class PlaneDenoiser(nn.Module):
    """One 2D U-Net shared by the content frame and the two motion planes (PVDM section 3.2).

    Shapes: ``planes [content (b, c, H, W), z_h (b, C, t, w), z_w (b, C, t, h)]``, ``timesteps
    (b,)``, ``fps (b,)`` -> the prediction for each plane, same shapes.

    * The content frame is cut into ``patch x patch`` patches stacked on channels
      (``b c (h p1) (w p2) -> b (c p1 p2) h w``, lossless, DiT's patchify with a 1x1 embedding), so
      it lies on the autoencoder's ``h x w`` grid like the motion planes; each plane has its own
      input and output convolution (their channel counts differ) and a learned plane embedding
      added to the conditioning, so the shared blocks know which plane they denoise.
    * Convolutions run on each plane with shared weights (planes of one size in one batch); the
      planes meet in :class:`~vdblocks.JointPlaneAttention` at every level, whose token count
      ``h w + t w + t h`` (then a quarter of it per level down) decides between softmax and FAVOR+
      (EVDM eq. 14).
    * Blocks are EVDM-L's BRPs; ``emb = TimestepEmbedding(t) + FPSEmbedding(fps)`` (ETC section 4.2:
      the frame rate goes through the timestep's sinusoid, then its own three-layer MLP) drives
      their scale-shift norms (EVDM eq. 8, and eq. 9 on the bottleneck: temporal enhancement).
    """

    def __init__(
        self,
        channels: int,
        motion_channels: int,
        patch: int = 2,
        model_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        bottleneck_ratio: int = 8,
        head_channels: int = 32,
        emb_dim: int = 128,
        threshold: float = 2.0,
        max_fps: float = 120.0,
    ) -> None:
        super().__init__()
        self.channels, self.motion_channels, self.patch = channels, motion_channels, patch
        widths = [model_channels * m for m in channel_mult]
        self.time = TimestepEmbedding(emb_dim, frequency_dim=model_channels)
        self.fps = FPSEmbedding(emb_dim, self.time, max_fps=max_fps)
        self.plane = nn.Embedding(len(PLANES), emb_dim)
        plane_channels = (channels * patch * patch, motion_channels, motion_channels)
        self.inputs = nn.ModuleList(nn.Conv2d(c, widths[0], 3, padding=1) for c in plane_channels)
        self.outputs = nn.ModuleList(
            nn.Sequential(group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], c, 3, padding=1))
            for c in plane_channels
        )
        last = len(widths) - 1
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        c_prev = widths[0]
        for level, width in enumerate(widths):
            self.down.append(
                nn.ModuleDict(
                    {
                        "block": _brp(c_prev, width, emb_dim, bottleneck_ratio),
                        "attn": _joint_attention(width, head_channels, threshold),
                        **({"down": nn.Conv2d(width, width, 3, stride=2, padding=1)} if level < last else {}),
                    }
                )
            )
            c_prev = width
        self.mid = nn.ModuleDict(
            {
                "block1": _brp(widths[-1], widths[-1], emb_dim, bottleneck_ratio),
                "attn": _joint_attention(widths[-1], head_channels, threshold),
                "block2": _brp(widths[-1], widths[-1], emb_dim, bottleneck_ratio),
            }
        )
        for level in reversed(range(len(widths))):
            width = widths[level]
            self.up.append(
                nn.ModuleDict(
                    {
                        "block": _brp(c_prev + width, width, emb_dim, bottleneck_ratio),
                        "attn": _joint_attention(width, head_channels, threshold),
                        **({"up": nn.Conv2d(width, widths[level - 1], 3, padding=1)} if level > 0 else {}),
                    }
                )
            )
            c_prev = widths[level - 1] if level > 0 else width
        self.init_weights()

    def init_weights(self) -> None:
        """Conditioning and residual branches start as identity (DiT): zero every scale-shift
        projection, attention output, the FPS MLP's last layer and the output convolutions."""
        for module in self.modules():
            if isinstance(module, ScaleShiftGroupNorm):
                nn.init.zeros_(module.proj.weight)
                nn.init.zeros_(module.proj.bias)
            elif isinstance(module, MixedSelfAttention):
                nn.init.zeros_(module.to_out.weight)
                nn.init.zeros_(module.to_out.bias)
        for layer in (self.fps.mlp[-1], *(out[-1] for out in self.outputs)):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, planes: Sequence[torch.Tensor], timesteps: torch.Tensor, fps: torch.Tensor) -> list[torch.Tensor]:
        content, z_h, z_w = planes
        check_tensor(content, "content", "(b, c, H, W)", sizes={"c": self.channels})
        check_tensor(z_h, "z_h", "(b, C, t, w)", sizes={"C": self.motion_channels})
        check_tensor(z_w, "z_w", "(b, C, t, h)", sizes={"C": self.motion_channels})
        p = self.patch
        emb = self.time(timesteps) + self.fps(fps)  # b e
        embs = [emb + self.plane.weight[i] for i in range(len(PLANES))]  # b e per plane

        def blocks(block: nn.Module, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            return _by_size(block, xs, embs)

        def convs(conv: nn.Module, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            return _by_size(conv, xs)

        content = rearrange(content, "b c (h p1) (w p2) -> b (c p1 p2) h w", p1=p, p2=p)  # b (c p p) h w
        xs = [conv(x) for conv, x in zip(self.inputs, (content, z_h, z_w))]  # b c0 h_i w_i
        skips = []
        for level in self.down:
            xs = level["attn"](blocks(level["block"], xs))
            skips.append(xs)
            if "down" in level:
                xs = convs(level["down"], xs)  # b c h_i/2 w_i/2
        xs = blocks(self.mid["block1"], xs)
        xs = blocks(self.mid["block2"], self.mid["attn"](xs))
        for level in self.up:
            xs = blocks(level["block"], [torch.cat([x, s], dim=1) for x, s in zip(xs, skips.pop())])
            xs = level["attn"](xs)
            if "up" in level:
                xs = convs(lambda x, conv=level["up"]: conv(F.interpolate(x, scale_factor=2.0)), xs)  # b c 2h 2w
        content, z_h, z_w = (out(x) for out, x in zip(self.outputs, xs))
        content = rearrange(content, "b (c p1 p2) h w -> b c (h p1) (w p2)", p1=p, p2=p)  # b c H W
        return [content, z_h, z_w]

    def attention_plan(self, t: int, h: int, w: int) -> list[tuple[int, str]]:
        """``[(tokens, algorithm)]`` of the joint attentions, one per level, for a ``t x h x w``
        latent grid: eq. 14 picks FAVOR+ where ``tokens > lambda * d``."""
        plan = []
        for module in self.down:
            tokens = h * w + t * w + t * h
            plan.append((tokens, module["attn"].attn.select_algorithm(tokens)))
            t, h, w = (t + 1) // 2, (h + 1) // 2, (w + 1) // 2
        return plan


# ----------------------------------------------------------------------------------- training


class LatentClips(Dataset):
    """Stage 2's data: every clip encoded once by the frozen autoencoder.

    Item: ``{"latent": (N,) packed and standardised (LatentLayout), "fps": float}``.
    """

    def __init__(self, latents: torch.Tensor, fps: torch.Tensor) -> None:
        self.latents, self.fps = latents, fps

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"latent": self.latents[index], "fps": self.fps[index]}


@torch.no_grad()
def encode_dataset(
    ae: ContentMotionAutoencoder, videos: Sequence[dict], cfg: CustomConfig, batch_size: int = 64
) -> tuple[LatentClips, LatentLayout]:
    """Encode every clip, measure each plane's mean and standard deviation (the layout's ``shift``
    and ``scale``) and return the standardised, packed latents with their frame rates."""
    ae.eval()
    device = next(ae.parameters()).device
    planes: list[list[torch.Tensor]] = [[], [], []]
    rates = []
    for start in range(0, len(videos), batch_size):
        items = [videos[i] for i in range(start, min(start + batch_size, len(videos)))]
        for store, plane in zip(planes, ae.encode(torch.stack([it["video"] for it in items]).to(device))):
            store.append(plane.cpu())
        rates += [it["fps"] for it in items]
    planes = [torch.cat(p) for p in planes]
    layout = LatentLayout(cfg, shift=[p.mean().item() for p in planes], scale=[p.std().item() for p in planes])
    return LatentClips(layout.pack(planes), torch.tensor(rates, dtype=torch.float32)), layout


@torch.no_grad()
def sample_clips(
    denoiser: nn.Module,
    ae: ContentMotionAutoencoder,
    layout: LatentLayout,
    cfg: CustomConfig,
    *,
    rate: float,
    num: int,
    steps: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` clips at ``rate`` frames per second: DDIM over the packed latents from noise drawn
    with ``seed`` (a CPU generator: the same starting noise on any device), then the decoder.
    Returns ``(videos (b, c, t, H, W), content (b, c, H, W))`` on the denoiser's device, in [-1, 1]."""
    denoiser = unwrap_model(denoiser).eval()
    device = next(denoiser.parameters()).device
    fps = torch.full((num,), float(rate), device=device)

    def model_fn(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return layout.pack(denoiser(layout.unpack(z_t, standardized=True), t, fps), standardized=True)

    generator = torch.Generator().manual_seed(seed)
    z = sample_ddim(
        model_fn, (num, layout.numel), cfg.diffusion, steps=steps, generator=generator, device=device
    )  # b N
    content, z_h, z_w = layout.unpack(z)
    videos = ae.decode(content, z_h, z_w).clamp(-1, 1)  # b c t H W
    return videos, content.clamp(-1, 1)


def make_sample_fn(
    ae: ContentMotionAutoencoder,
    layout: LatentLayout,
    cfg: CustomConfig,
    *,
    rates: Sequence[float],
    num_samples: int,
    steps: int,
    seed: int,
):
    """``sample_fn(ema_denoiser, step, out_dir)``: DDIM at each of ``rates``
    (:func:`sample_clips`), written as ``fps<F>_<i>.mp4`` and ``fps<F>_grid.png`` (and the sampled
    content frames as ``fps<F>_content.png``)."""

    def sample_fn(denoiser: nn.Module, step: int, out_dir: Path) -> list[Path]:
        paths: list[Path] = []
        for rate in rates:
            videos, content = sample_clips(
                denoiser, ae, layout, cfg, rate=rate, num=num_samples, steps=steps, seed=seed
            )
            paths += write_samples(videos.cpu(), out_dir, stem=f"fps{rate:g}", fps=rate)
            paths.append(
                save_frame_grid(out_dir / f"fps{rate:g}_content.png", rearrange(content.cpu(), "b c h w -> b c 1 h w"))
            )
        return paths

    return sample_fn


# ------------------------------------------------------------------------------------ the probe


def probe_rate(cfg: CustomConfig) -> float:
    """The rate the probe's clips are sampled at: ``PROBE_FPS`` (8) when the model trained on it,
    else the training rate nearest to it (the lower one on a tie)."""
    return min(cfg.fps_choices, key=lambda r: (abs(r - PROBE_FPS), r))


def probe_samples(
    denoiser: nn.Module,
    ae: ContentMotionAutoencoder,
    layout: LatentLayout,
    cfg: CustomConfig,
    data: MovingShapes,
    out: Path,
    *,
    clips: int,
    steps: int,
    seed: int,
    started: float,
) -> dict:
    """Sample ``clips`` clips at :func:`probe_rate` with :func:`sample_clips` and score them with the
    :class:`~reference_models.common.probe.ShapesProbe` of the training data ``data`` at that rate.

    Nothing is asked of the model but the frame rate, so the conditions are ``None``: what counts is
    the one-object fraction, the Frechet distance (against its real-vs-real floor) and the kinds
    the probe reads, whose shares should be the data's (it draws every kind equally often). Writes
    ``<out>/probe.json`` (returned) and the first 16 clips, upscaled 4x, to ``<out>/probe_grid.png``.
    """
    probe_start = time.perf_counter()
    rate = probe_rate(cfg)
    probe = ShapesProbe.for_dataset(data, fps=rate)  # trained once (seconds), then cached
    videos, _ = sample_clips(denoiser, ae, layout, cfg, rate=rate, num=clips, steps=steps, seed=seed)
    videos = videos.float().cpu()
    result = probe.evaluate(videos, [None] * clips, fps=rate)
    read = [p["kind"] for p in result.predictions]
    kinds = tuple(data.kinds)
    distribution = {
        "kinds": list(kinds),
        "fraction": {k: read.count(k) / len(read) for k in kinds},  # what the probe reads
        "data_share": {k: 1.0 / len(kinds) for k in kinds},
    }  # label_by="shape": kinds in turn
    grid = save_frame_grid(
        out / "probe_grid.png", einops.repeat(videos[:16], "b c t h w -> b c t (h u) (w v)", u=4, v=4)
    )
    report = {
        "probe": result.to_dict(),
        "fps": rate,
        "sampler": {
            "name": "ddim",
            "steps": steps,
            "eta": 0.0,
            "seed": seed,
            "clips": clips,
            "prediction_type": cfg.diffusion.prediction_type,
        },
        "run": {
            "seconds_to_here": round(time.perf_counter() - started, 1),
            "probe_seconds": round(time.perf_counter() - probe_start, 1),
        },
        "kind_distribution": distribution,
    }
    path = out / "probe.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(result.format())
    print(
        f"shape kinds the probe reads in the {clips} clips (data: every kind equally often; "
        "meaningful on one-object clips):"
    )
    for k in kinds:
        print(f"  {k:<10}{distribution['fraction'][k]:>7.1%}   (data {distribution['data_share'][k]:.1%})")
    print(f"probe: {path}, first {min(clips, 16)} clips in {grid}")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="examples/custom_architecture.py",
        description="Train a CMD + PVDM + EVDM + ETC video diffusion model on moving shapes and sample videos.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a CustomConfig field, e.g. --set size=32 --set channel_mult=[1,2,2]",
    )
    p.add_argument("--ae-steps", type=int, default=400, help="stage 1: autoencoder steps")
    p.add_argument("--steps", type=int, default=1400, help="stage 2: denoiser steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--num-videos", type=int, default=2048, help="moving-shapes clips to train on")
    p.add_argument("--fps", type=float, nargs="+", default=[4.0, 16.0], help="frame rates to sample at")
    p.add_argument("--num-samples", type=int, default=6, help="videos per frame rate")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    p.add_argument(
        "--probe-clips",
        type=_non_negative_int,
        default=32,
        help="clips sampled at 8 fps (or the training rate nearest it) and scored by the shapes probe (0: skip)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/custom", help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer (0 skips the probe), got {text!r}")
    return value


def _train_config(args: argparse.Namespace, steps: int, out: Path, ema_decay: float) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=min(50, steps // 10),
        cosine=True,
        ema_decay=ema_decay,
        log_every=max(1, min(50, steps // 10)),
        ckpt_every=0,
        out_dir=out,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> dict:
    """Train both stages and sample as the flags say (``--help``).

    Returns ``{"autoencoder": TrainState, "denoiser": TrainState, "samples": [paths], "probe": report}``
    (``report``: what ``<out>/probe.json`` holds, ``None`` with ``--probe-clips 0``).
    """
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    cfg = CustomConfig().replace(**dict(parse_override(o) for o in args.overrides))
    out = Path(args.out)
    device = resolve_device(args.device)
    shapes = MovingShapes(
        args.num_videos,
        frames=cfg.frames,
        height=cfg.size,
        width=cfg.size,
        fps=cfg.fps_choices,
        channels=cfg.channels,
        max_shapes=1,
        size_range=(0.15, 0.3),
        seed=args.seed,
    )
    videos = [shapes[i] for i in range(len(shapes))]  # rendered once: both stages read every clip

    # Stage 1: the autoencoder, on a plain reconstruction loss (CMD: "a simple l2 objective").
    torch.manual_seed(args.seed)
    ae = ContentMotionAutoencoder(
        cfg.channels, cfg.ae_dim, cfg.motion_channels, cfg.patch, cfg.ae_depth, cfg.ae_heads, cfg.projector_depth
    )
    print(
        f"stage 1: autoencoder, {_millions(ae)} M parameters; {len(videos)} clips of {cfg.frames} frames "
        f"{cfg.size}x{cfg.size} at {list(cfg.fps_choices)} fps -> content frame {cfg.channels}x{cfg.size}x"
        f"{cfg.size} + motion planes 2 x {cfg.motion_channels}x{cfg.frames}x{cfg.latent_size}"
    )

    def reconstruction_loss(model: nn.Module, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        return F.mse_loss(model(batch["video"], cfg.latent_noise, generator), batch["video"])

    # ema_decay=0: the autoencoder is used as trained (its EMA would lag a 400-step run).
    ae_state = train(
        _train_config(args, args.ae_steps, out / "autoencoder", ema_decay=0.0),
        ae,
        reconstruction_loss,
        videos,
        config_dict={"custom": cfg.to_dict()},
    )
    ae = ae_state.model.eval().requires_grad_(False)
    recon_grid = _save_reconstructions(ae, videos, out / "autoencoder" / "reconstruction.png", device)

    # Stage 2: encode once, then the shared plane U-Net on the standardised latents.
    latents, layout = encode_dataset(ae, videos, cfg)
    torch.manual_seed(args.seed)
    denoiser = PlaneDenoiser(
        cfg.channels,
        cfg.motion_channels,
        cfg.patch,
        cfg.model_channels,
        cfg.channel_mult,
        cfg.bottleneck_ratio,
        cfg.head_channels,
        cfg.emb_dim,
        cfg.attention_threshold,
        cfg.max_fps,
    )
    plan = ", ".join(
        f"{n} tokens: {algo}" for n, algo in denoiser.attention_plan(cfg.frames, cfg.latent_size, cfg.latent_size)
    )
    print(
        f"stage 2: plane denoiser, {_millions(denoiser)} M parameters; latent {layout.numel} numbers per clip "
        f"({cfg.channels * cfg.frames * cfg.size**2} in the video), plane mean/std "
        f"{', '.join(f'{m:.2f}/{s:.2f}' for m, s in zip(layout.shift, layout.scale))}; joint attention {plan}"
    )

    def denoising_loss(model: nn.Module, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        def model_fn(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return layout.pack(model(layout.unpack(z_t, standardized=True), t, batch["fps"]), standardized=True)

        return diffusion_loss(model_fn, batch["latent"], cfg.diffusion, generator=generator)

    sample_fn = make_sample_fn(
        ae, layout, cfg, rates=args.fps, num_samples=args.num_samples, steps=args.sample_steps, seed=args.seed
    )
    tcfg = _train_config(args, args.steps, out / "denoiser", ema_decay=min(0.999, max(0.0, 1 - 10 / args.steps)))
    den_state = train(
        dataclasses.replace(tcfg, sample_every=args.steps),
        denoiser,
        denoising_loss,
        latents,
        sample_fn=sample_fn,
        config_dict={"custom": cfg.to_dict(), "latent": {"shift": list(layout.shift), "scale": list(layout.scale)}},
    )

    for name, state in (("autoencoder", ae_state), ("denoiser", den_state)):
        losses = [row["loss"] for row in state.history if "loss" in row]
        print(
            f"{name}: loss {losses[0]:.4f} -> {losses[-1]:.4f} over {state.step} steps; "
            f"checkpoint {state.last_checkpoint}"
        )
    samples = sorted((out / "denoiser" / "samples").glob("fps*"))
    print(f"samples ({time.perf_counter() - start:.0f} s in all):")
    for path in samples:
        if path.suffix == ".png" or path.name.endswith("_00.mp4"):
            print(f"  {path}")
    print(f"  {recon_grid} (4 real clips, then their autoencoder reconstructions)")
    report = None
    if args.probe_clips > 0:
        # The EMA weights, as the samples above; another seed, so not the same noise.
        report = probe_samples(
            den_state.ema.module,
            ae,
            layout,
            cfg,
            shapes,
            out,
            clips=args.probe_clips,
            steps=args.sample_steps,
            seed=args.seed + 1,
            started=start,
        )
    return {"autoencoder": ae_state, "denoiser": den_state, "samples": samples, "probe": report}


@torch.no_grad()
def _save_reconstructions(ae: ContentMotionAutoencoder, videos: Sequence[dict], path: Path, device) -> Path:
    real = torch.stack([videos[i]["video"] for i in range(min(4, len(videos)))]).to(device)
    recon = ae(real).clamp(-1, 1)
    return save_frame_grid(path, torch.cat([real, recon]).cpu())


def _millions(module: nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}"


if __name__ == "__main__":
    main(sys.argv[1:])
