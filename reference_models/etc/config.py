"""ETC's configuration: one frozen dataclass, named presets, JSON round trip.

The config holds everything needed to rebuild the U-Net (:class:`~reference_models.etc.model.ETCUNet`),
its conditioner (:class:`~reference_models.etc.conditioning.ETCConditioner`) and the noise schedule,
and is saved with every checkpoint (``to_dict`` / ``from_dict``), as nanoGPT's ``GPTConfig`` and
DiT's ``DiT_models`` do.

Presets:

* ``"tiny"``: trains on a 2-core CPU in about four minutes (``examples/train_etc.py``): 4 RGB
  frames of 16x16 (a 2x2 grid, 32x32 image), 32 base channels, 3 levels (32, 64, 64 channels at
  32x32, 16x16, 8x8), attention at the lowest level only (64 tokens, 16 per frame), the pooled
  context added to the timestep embedding, a 1-layer word-hash text encoder, the label
  embedding, min-SNR-5 loss weighting and guidance scale 1. With 3 channels the ME (eq. 4) has
  one spatial and two temporal channels: frames stay well apart, positions inside a frame are
  only coarsely coded (see ``SpatialTemporalMixedEmbedding``); SD latents (4) give 2 + 2. Why
  each choice, measured with the shapes probe, is in ``docs/systems/etc.md`` ("The CPU example");
* ``"small"``: the same at 32x32 frames with 64 base channels and 3 levels, for a single GPU;
* ``"sd21"``: shaped like Stable Diffusion 2.1's U-Net (ETC initialises its spatial modules from
  SD 2.1, section 5.1): 4 latent channels, 320 base channels, mult (1, 2, 4, 4), 2 res blocks,
  attention at levels 0-2, 64 channels per head, context 1024 (OpenCLIP ViT-H), SD's diffusion
  (1000 scaled-linear steps 0.00085 -> 0.012, epsilon, no clipping of its latents); 16 frames of
  32x32 latents (256x256 video through SD's 8x VAE, the paper's base setting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from vdblocks.diffusion import DiffusionSpec

from ..common.config import (
    ConfigBase,
    check_channel_mult,
    check_config_fractions,
    check_config_ints,
    get_preset,
    is_int,
    is_number,
)

__all__ = ["ETCConfig", "PIXEL_DIFFUSION", "PRESETS", "SD_DIFFUSION", "get_config"]

_GRID_ORDERS = ("column", "row")

PIXEL_DIFFUSION = DiffusionSpec(
    schedule="linear",
    num_train_steps=1000,
    beta_start=1e-4,
    beta_end=0.02,
    prediction_type="v_prediction",
    clip_sample=True,
)
"""DDPM's 1000 linear steps 1e-4 -> 0.02, the velocity (see :class:`ETCConfig`), ``x_0`` clipped to
``[-1, 1]`` (pixels): the default, and the ``tiny`` and ``small`` presets."""

SD_DIFFUSION = DiffusionSpec(
    schedule="scaled_linear",
    num_train_steps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    prediction_type="epsilon",
    clip_sample=False,
)
"""Stable Diffusion 2.1-base's: 1000 scaled-linear steps 0.00085 -> 0.012, epsilon, no clipping
(its VAE latents are not bounded by 1): the ``sd21`` preset."""


@dataclass(frozen=True)
class ETCConfig(ConfigBase):
    """Everything that defines an ETC model, its conditioning and its noise schedule.

    Architecture (SD-style U-Net on the frame grid, section 4.1):
    ``in_channels`` (3 for pixels, 4 for SD latents), ``model_channels`` (base width),
    ``channel_mult`` (width multiplier per level; ``len`` = number of levels), ``num_res_blocks``
    per level, ``attention_levels`` (levels with spatial transformers; the middle block always has
    one), ``num_head_channels`` (channels per attention head), ``transformer_depth`` (transformer
    blocks per spatial transformer), ``norm_groups`` (GroupNorm groups, at most), ``dropout``.

    Conditioning: ``context_dim`` (cross-attention width), ``num_classes`` (None: no label
    conditioning), ``text_vocab_size`` (hash buckets of the built-in word encoder; None: no
    built-in text encoder), ``text_max_len``, ``text_layers``, ``text_heads``, ``cond_dropout``
    (classifier-free guidance drop probability), ``pooled_context`` (also add an MLP of the
    context tokens' mean to the timestep embedding, so every ResBlock sees the condition, as SDXL
    adds its pooled text embedding and Imagen its pooled T5 embedding; SD 2.1, and so ``sd21``,
    conditions through cross-attention only).

    Video: ``frames``, ``height``, ``width`` (training frame count and frame size; any size that
    fits works at inference, see ``ETCUNet.check_input``), ``grid`` (``(rows, cols)``; None picks
    ``vdblocks.grid_for(t)`` for each clip), ``grid_order`` (eq. 1's ``"column"`` or ``"row"``),
    ``theta`` (the ME's base Θ, eqs. 2-3), ``max_fps`` (section 4.2: 120).

    Diffusion: ``diffusion``, a :class:`~vdblocks.diffusion.DiffusionSpec` (schedule, steps,
    betas, what the U-Net predicts: the noise, the velocity or ``x_0``, see below; whether sampling
    clips ``x_0`` to ``[-1, 1]``: on for pixel models, off for latents; :data:`PIXEL_DIFFUSION`
    by default), ``snr_gamma`` (min-SNR-gamma loss weighting, ``vdblocks.diffusion.diffusion_loss``;
    None: the plain loss).

    Sampling: ``guidance_scale``, the classifier-free guidance the samplers use unless told
    otherwise (appendix E.1: 7.0; ``tiny``: 1.0, see below).

    The paper does not say what its U-Net predicts (SD 2.1 comes as an epsilon model at 512 px and
    a v-prediction model at 768 px). ``tiny`` and ``small`` predict the velocity: a small model
    trained for minutes predicts the noise with an RMS error near 0.1 at every level, and at the
    first sampling steps of the linear schedule (``abar ~ 4e-5``) the x0 implied by the noise is
    off by that error times ``sqrt((1 - abar) / abar) ~ 156``, so DDIM starts from coloured speckle
    it never removes; a velocity error reaches x0 undivided. ``sd21`` keeps SD 2.1-base's epsilon,
    so its weights load as they are.
    """

    in_channels: int = 3
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1,)
    num_head_channels: int = 32
    transformer_depth: int = 1
    norm_groups: int = 8
    dropout: float = 0.0
    context_dim: int = 64
    num_classes: int | None = 5
    text_vocab_size: int | None = 512
    text_max_len: int = 16
    text_layers: int = 1
    text_heads: int = 4
    cond_dropout: float = 0.1
    pooled_context: bool = False
    frames: int = 8
    height: int = 16
    width: int = 16
    grid: tuple[int, int] | None = None
    grid_order: str = "column"
    theta: float = 10000.0
    max_fps: float = 120.0
    diffusion: DiffusionSpec = PIXEL_DIFFUSION
    snr_gamma: float | None = None
    guidance_scale: float = 7.0

    _tuple_fields: ClassVar[tuple[str, ...]] = ("channel_mult", "attention_levels", "grid")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config_ints(
            self,
            (
                "in_channels",
                "model_channels",
                "num_res_blocks",
                "num_head_channels",
                "transformer_depth",
                "norm_groups",
                "context_dim",
                "text_max_len",
                "text_heads",
                "frames",
                "height",
                "width",
            ),
        )
        check_config_ints(self, ("text_layers",), minimum=0)
        check_config_ints(self, ("num_classes", "text_vocab_size"), optional=True)
        if self.text_vocab_size is not None and self.text_vocab_size < 2:
            raise ValueError(f"expected text_vocab_size >= 2 (id 0 is padding), got {self.text_vocab_size}")
        if self.text_vocab_size is not None and (self.context_dim % 2 or self.context_dim % self.text_heads):
            raise ValueError(
                f"expected context_dim even and divisible by text_heads for the word encoder, "
                f"got context_dim={self.context_dim}, text_heads={self.text_heads}"
            )
        mult = self.channel_mult
        check_channel_mult(mult)
        levels = self.attention_levels
        if not isinstance(levels, tuple) or not all(is_int(i) and 0 <= i < len(mult) for i in levels):
            raise ValueError(
                f"expected attention_levels to be a tuple of level indices in [0, {len(mult)}), got {levels!r}"
            )
        # The middle block (at the last level's width) always attends.
        for level in (*levels, len(mult) - 1):
            width = self.model_channels * mult[level]
            if width % self.num_head_channels:
                raise ValueError(
                    f"expected the width of attention level {level} ({width} = model_channels * "
                    f"channel_mult[{level}]) to be divisible by num_head_channels={self.num_head_channels}"
                )
        if self.grid is not None:
            g = self.grid
            if not isinstance(g, tuple) or len(g) != 2 or not all(is_int(v) and v > 0 for v in g):
                raise ValueError(f"expected grid to be None or a pair (rows, cols) of positive ints, got {g!r}")
            if self.frames > g[0] * g[1]:
                raise ValueError(f"expected frames <= rows*cols of grid {g}, got frames={self.frames}")
        if self.grid_order not in _GRID_ORDERS:
            raise ValueError(f"expected grid_order in {_GRID_ORDERS}, got {self.grid_order!r}")
        if not is_number(self.theta) or not self.theta > 1:
            raise ValueError(f"expected theta to be a number > 1, got {self.theta!r}")
        if not is_number(self.max_fps) or not 0 < self.max_fps < math.inf:
            raise ValueError(f"expected max_fps to be a positive finite number, got {self.max_fps!r}")
        check_config_fractions(self, ("dropout", "cond_dropout"))
        if not isinstance(self.pooled_context, bool):
            raise ValueError(f"expected pooled_context to be a bool, got {self.pooled_context!r}")
        if not is_number(self.guidance_scale) or not math.isfinite(self.guidance_scale):
            raise ValueError(f"expected guidance_scale to be a finite number, got {self.guidance_scale!r}")
        if self.snr_gamma is not None and (not is_number(self.snr_gamma) or not 0 < self.snr_gamma < math.inf):
            raise ValueError(f"expected snr_gamma to be None or a positive finite number, got {self.snr_gamma!r}")

    @classmethod
    def legacy_clip_sample(cls, data: Any) -> bool:
        """Configs saved before the spec were sampled with ``x_0`` clipped for pixel models (1 or 3 channels)."""
        return data.get("in_channels", cls.in_channels) in (1, 3)

    @property
    def num_levels(self) -> int:
        """Resolution levels of the U-Net (``len(channel_mult)``)."""
        return len(self.channel_mult)

    @property
    def size_multiple(self) -> int:
        """Frame height and width must be multiples of this: ``2 ** (num_levels - 1)``."""
        return 2 ** (self.num_levels - 1)

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep (and FPS) embedding: ``4 * model_channels``, as in SD."""
        return 4 * self.model_channels


PRESETS: dict[str, ETCConfig] = {
    # Each departure from the defaults was measured with the shapes probe (docs/systems/etc.md).
    "tiny": ETCConfig(
        frames=4,
        channel_mult=(1, 2, 2),
        attention_levels=(2,),
        pooled_context=True,
        snr_gamma=5.0,
        guidance_scale=1.0,
    ),
    "small": ETCConfig(
        model_channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_levels=(1, 2),
        num_head_channels=32,
        norm_groups=32,
        context_dim=256,
        text_vocab_size=4096,
        text_max_len=24,
        text_layers=2,
        text_heads=4,
        frames=16,
        height=32,
        width=32,
    ),
    "sd21": ETCConfig(
        in_channels=4,
        model_channels=320,
        channel_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        attention_levels=(0, 1, 2),
        num_head_channels=64,
        transformer_depth=1,
        norm_groups=32,
        context_dim=1024,
        num_classes=None,
        text_vocab_size=49408,
        text_max_len=77,
        text_layers=2,
        text_heads=16,
        frames=16,
        height=32,
        width=32,
        diffusion=SD_DIFFUSION,
    ),
}


def get_config(name: str, **overrides: Any) -> ETCConfig:
    """The preset ``name`` with ``overrides`` applied (validated like any config)."""
    return get_preset(PRESETS, name, **overrides)
