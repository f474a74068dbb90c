"""PVDM's two configurations: the triplane autoencoder and the latent diffusion U-Net, with presets.

PVDM (Yu et al., CVPR 2023) trains in two stages, so there are two frozen dataclasses, each saved
with its stage's checkpoints (``to_dict`` / ``from_dict``):

* :class:`AutoencoderConfig` (section 3.2, appendices A and D): the video size it trains on, the
  patch size, the TimeSformer encoder / decoder, the three axis projectors ``f_s, f_h, f_w`` and the
  loss weights (L1, LPIPS ``lambda_1``, GAN ``lambda_2`` switched on at ``gan_start``).
* :class:`DiffusionConfig` (section 3.3, Table 6): the shared-weight 2D U-Net over the three planes,
  the conditional / null mixing weight ``lambda`` of the long-video objective and the noise schedule.

Presets (:data:`AUTOENCODER_PRESETS`, :data:`DIFFUSION_PRESETS`):

========================  ====================================================================
``paper`` (autoencoder)   16 frames of 256x256 RGB, patch ``(1, 8, 8)`` -> 32x32 / 16x32 / 16x32
                          planes of ``C = 4``: ``(1024 + 512 + 512) * 4 = 8192`` numbers
                          (appendix D). Width 384, 8 encoder and 8 decoder blocks, projectors of
                          4 blocks, 4 heads, MLP 512 (appendix D).
``tiny`` (autoencoder)    8 frames of 32x32 RGB, patch ``(1, 4, 4)`` -> 8x8 planes of ``C = 8``;
                          trains on CPU. It adds a squared-error term to the L1 loss: on
                          mostly black moving-shapes frames L1 alone sits at the all-black
                          solution for hundreds of steps, which a CPU run cannot afford.
``pvdm_s`` / ``pvdm_l``   Table 6: base channels 128 / 256, attention at downsample factors
                          ``[4, 2, 1]``, 2 res blocks, multipliers ``[1, 2, 4]``, 8 heads,
                          1000 steps from 0.0015 to 0.0195, on the ``paper`` autoencoder's planes.
``tiny`` (diffusion)      base 32, multipliers ``[1, 2]``, on the ``tiny`` autoencoder's planes.
========================  ====================================================================

Readings taken where the paper leaves a gap:

* **Patch size.** Appendix D says "patch size 4x4x1" *and* that 256x256x16 videos become 32x32
  planes; the planes need a spatial stride of 8, so the ``paper`` preset cuts ``1 x 8 x 8``
  patches (the figure the paper's latent size, 8,192, fixes).
* **Encoder / decoder depth and width.** Appendix D gives the projectors (4 blocks, 4 heads, width
  384, MLP 512) but not the TimeSformers; we use the projectors' width 384 and 8 blocks of 8 heads
  each way, which lands near Table 8's largest autoencoder (35 M + 27 M parameters).
* **"Linear" betas.** Table 6's "linear start 0.0015, linear end 0.0195" are LDM's defaults, whose
  ``"linear"`` schedule is linear in ``sqrt(beta)`` (``linspace(sqrt(b0), sqrt(b1), T) ** 2``);
  PVDM's release reuses LDM's code, so the presets use our ``"scaled_linear"``, which is that
  schedule.
* **lambda.** Section 3.3's weight between the conditional and the null objective has no value in
  the paper; ``cond_prob = 0.5`` weighs both alike.
* **lambda_3 = 0.25** (appendix A) is VQGAN's commitment weight; PVDM has no vector quantiser
  (a ``tanh`` bounds the latents instead), so it has nothing to weigh here.
"""

from __future__ import annotations

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

__all__ = [
    "AUTOENCODER_PRESETS",
    "DIFFUSION_PRESETS",
    "PVDM_DIFFUSION",
    "AutoencoderConfig",
    "DiffusionConfig",
    "get_autoencoder_config",
    "get_diffusion_config",
]

PVDM_DIFFUSION = DiffusionSpec(
    schedule="scaled_linear",
    num_train_steps=1000,
    beta_start=0.0015,
    beta_end=0.0195,
    prediction_type="epsilon",
    clip_sample=True,
)
"""Table 6's diffusion: 1000 steps of LDM's "linear" (our ``"scaled_linear"``) 0.0015 -> 0.0195,
the noise predicted (section 3.3's objective), and the ``z_0`` estimate clipped to ``[-1, 1]``:
PVDM's latents come out of a ``tanh``, so clipping only enforces a bound every real latent meets."""


@dataclass(frozen=True)
class AutoencoderConfig(ConfigBase):
    """PVDM's triplane autoencoder and its loss (section 3.2, appendices A and D).

    Data: ``channels``, ``frames`` (``S``), ``height``, ``width`` (the training size; the model
    takes any size divisible by ``patch_size``, see :meth:`check_video_size`).

    Model: ``patch_size`` ``(pt, ph, pw)``, ``dim`` (token width), ``encoder_depth`` /
    ``decoder_depth`` (TimeSformer blocks), ``heads`` / ``dim_head`` of those blocks,
    ``mlp_ratio``; projectors ``f_s, f_h, f_w``: ``proj_depth`` blocks of ``proj_heads`` heads with
    an MLP of ``proj_mlp_dim``, pooled by ``proj_pool`` (``"token"`` or ``"mean"``, see
    :class:`~vdblocks.TriplaneProjector`); ``latent_channels`` (``C``).

    Loss (appendix A, ``L = L_pixel + lambda_1 L_LPIPS + lambda_2 L_GAN``): ``l1_weight``,
    ``l2_weight`` (an optional squared-error term; 0 in the paper), ``perceptual_weight`` (``lambda_1``; used only when a feature network is given),
    ``use_gan``, ``gan_weight`` (``lambda_2``, 0 before step ``gan_start``), ``feature_match_weight``
    (TATS's feature-similarity term inside ``L_GAN``), and the 3D discriminator's
    ``disc_channels`` / ``disc_layers``.
    """

    channels: int = 3
    frames: int = 16
    height: int = 256
    width: int = 256
    patch_size: tuple[int, int, int] = (1, 8, 8)
    dim: int = 384
    encoder_depth: int = 8
    decoder_depth: int = 8
    heads: int = 8
    dim_head: int = 48
    mlp_ratio: float = 4.0
    proj_depth: int = 4
    proj_heads: int = 4
    proj_mlp_dim: int = 512
    proj_pool: str = "token"
    latent_channels: int = 4
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    perceptual_weight: float = 1.0
    use_gan: bool = True
    gan_weight: float = 0.25
    gan_start: int = 50000
    feature_match_weight: float = 1.0
    disc_channels: int = 64
    disc_layers: int = 3

    _tuple_fields: ClassVar[tuple[str, ...]] = ("patch_size",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config_ints(
            self,
            (
                "channels",
                "frames",
                "height",
                "width",
                "dim",
                "encoder_depth",
                "decoder_depth",
                "heads",
                "dim_head",
                "proj_depth",
                "proj_heads",
                "proj_mlp_dim",
                "latent_channels",
                "disc_channels",
                "disc_layers",
            ),
        )
        check_config_ints(self, ("gan_start",), minimum=0)
        p = self.patch_size
        if not isinstance(p, tuple) or len(p) != 3 or not all(is_int(v) and v > 0 for v in p):
            raise ValueError(f"expected patch_size to be three positive ints (pt, ph, pw), got {p!r}")
        if self.dim % 4:
            raise ValueError(f"expected dim divisible by 4 (sin-cos positions over h and w), got {self.dim}")
        if self.proj_pool not in ("token", "mean"):
            raise ValueError(f"expected proj_pool in ('token', 'mean'), got {self.proj_pool!r}")
        if not isinstance(self.use_gan, bool):
            raise TypeError(f"expected use_gan to be a bool, got {self.use_gan!r}")
        for name in ("mlp_ratio", "l1_weight", "l2_weight", "perceptual_weight", "gan_weight", "feature_match_weight"):
            value = getattr(self, name)
            if not is_number(value) or value < 0 or (name == "mlp_ratio" and value == 0):
                raise ValueError(f"expected {name} to be a number >= 0 (> 0 for mlp_ratio), got {value!r}")
        self.check_video_size(self.frames, self.height, self.width)

    def check_video_size(self, frames: int, height: int, width: int) -> None:
        """Raise ``ValueError`` naming the axis unless ``frames x height x width`` cuts into whole patches."""
        for size, patch, name in zip((frames, height, width), self.patch_size, ("frames", "height", "width")):
            if not is_int(size) or size <= 0 or size % patch:
                raise ValueError(
                    f"expected {name} to be a positive multiple of the patch size {patch} "
                    f"(patch_size={self.patch_size}), got {size!r}"
                )

    def latent_grid(
        self, frames: int | None = None, height: int | None = None, width: int | None = None
    ) -> tuple[int, int, int]:
        """``(t, h, w)`` of the plane grid for a video (default: the training size): the sizes
        divided by the patch size, so ``z_s (C, h, w)``, ``z_h (C, t, w)``, ``z_w (C, t, h)``."""
        frames, height, width = frames or self.frames, height or self.height, width or self.width
        self.check_video_size(frames, height, width)
        pt, ph, pw = self.patch_size
        return frames // pt, height // ph, width // pw


@dataclass(frozen=True)
class DiffusionConfig(ConfigBase):
    """PVDM's latent denoiser and diffusion (sections 3.2-3.3, Table 6).

    Latents: ``latent_channels`` (``C``) and the plane grid ``latent_frames``, ``latent_height``,
    ``latent_width`` it trains on (the U-Net itself takes any grid, see
    :class:`~reference_models.pvdm.unet.TriplaneUNet`).

    U-Net: ``base_channels``, ``channel_mult``, ``num_res_blocks`` per level, ``attn_resolutions``
    (LDM's downsample factors ``2 ** level`` at which every block is followed by joint attention
    over the three planes' tokens; the middle block always attends), ``heads``, ``dropout``,
    ``emb_mult`` (timestep embedding width ``emb_mult * base_channels``).

    Long videos (section 3.3): ``cond_prob`` (``lambda``: the chance that a training sample is
    conditioned on the previous clip's latent rather than the null condition).

    Diffusion: ``diffusion``, a :class:`~vdblocks.diffusion.DiffusionSpec`: :data:`PVDM_DIFFUSION`
    (Table 6's schedule, epsilon prediction, ``z_0`` clipped to the ``tanh`` range) by default.
    """

    latent_channels: int = 4
    latent_frames: int = 16
    latent_height: int = 32
    latent_width: int = 32
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (4, 2, 1)
    heads: int = 8
    dropout: float = 0.0
    emb_mult: int = 4
    cond_prob: float = 0.5
    diffusion: DiffusionSpec = PVDM_DIFFUSION

    _tuple_fields: ClassVar[tuple[str, ...]] = ("channel_mult", "attn_resolutions")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config_ints(
            self,
            (
                "latent_channels",
                "latent_frames",
                "latent_height",
                "latent_width",
                "base_channels",
                "num_res_blocks",
                "heads",
                "emb_mult",
            ),
        )
        check_channel_mult(self.channel_mult)
        factors = tuple(2**i for i in range(len(self.channel_mult)))
        res = self.attn_resolutions
        if not isinstance(res, tuple) or not all(is_int(r) and r in factors for r in res):
            raise ValueError(
                f"expected attn_resolutions to be a tuple of downsample factors among {factors} "
                f"(2 ** level for channel_mult={self.channel_mult}), got {res!r}"
            )
        for width in {self.base_channels * m for m in self.channel_mult}:
            if width % self.heads:
                raise ValueError(
                    f"expected every U-Net width (base_channels * channel_mult = {width}) to be divisible by "
                    f"heads={self.heads}"
                )
        check_config_fractions(self, ("dropout",), below_one=True)
        check_config_fractions(self, ("cond_prob",))

    @property
    def emb_dim(self) -> int:
        """Width of the timestep (and plane) embedding."""
        return self.emb_mult * self.base_channels

    @property
    def latent_grid(self) -> tuple[int, int, int]:
        """``(t, h, w)`` of the planes this model trains on."""
        return self.latent_frames, self.latent_height, self.latent_width

    @property
    def latent_size(self) -> int:
        """Numbers in one latent: ``(h w + t w + t h) * C``."""
        t, h, w = self.latent_grid
        return (h * w + t * w + t * h) * self.latent_channels


_TINY_AE: dict[str, Any] = dict(
    channels=3,
    frames=8,
    height=32,
    width=32,
    patch_size=(1, 4, 4),
    dim=64,
    encoder_depth=2,
    decoder_depth=2,
    heads=4,
    dim_head=16,
    mlp_ratio=2.0,
    proj_depth=1,
    proj_heads=4,
    proj_mlp_dim=128,
    latent_channels=8,
    l2_weight=1.0,
    use_gan=False,
    gan_start=0,
    disc_channels=16,
    disc_layers=2,
)

AUTOENCODER_PRESETS: dict[str, AutoencoderConfig] = {
    "paper": AutoencoderConfig(),
    "tiny": AutoencoderConfig(**_TINY_AE),
}
"""``paper``: appendix D's autoencoder at 256x256x16; ``tiny``: a CPU-sized one (8 frames of 32x32)."""

_TABLE6: dict[str, Any] = dict(
    channel_mult=(1, 2, 4),
    attn_resolutions=(4, 2, 1),
    num_res_blocks=2,
    heads=8,
    diffusion=PVDM_DIFFUSION,
)

DIFFUSION_PRESETS: dict[str, DiffusionConfig] = {
    "pvdm_s": DiffusionConfig(base_channels=128, **_TABLE6),
    "pvdm_l": DiffusionConfig(base_channels=256, **_TABLE6),
    "tiny": DiffusionConfig(
        latent_channels=8,
        latent_frames=8,
        latent_height=8,
        latent_width=8,
        base_channels=32,
        channel_mult=(1, 2),
        attn_resolutions=(2, 1),
        num_res_blocks=1,
        heads=4,
        diffusion=PVDM_DIFFUSION,
    ),
}
"""Table 6's PVDM-S and PVDM-L (on the ``paper`` autoencoder's 16x32x32 grid) and a CPU-sized ``tiny``."""


def get_autoencoder_config(name: str, **overrides: Any) -> AutoencoderConfig:
    """The autoencoder preset ``name`` with ``overrides`` applied (validated like any config)."""
    return get_preset(AUTOENCODER_PRESETS, name, **overrides)


def get_diffusion_config(name: str, **overrides: Any) -> DiffusionConfig:
    """The diffusion preset ``name`` with ``overrides`` applied (validated like any config)."""
    return get_preset(DIFFUSION_PRESETS, name, **overrides)
