"""CMD's configuration: one frozen dataclass for the three parts, DiT sizes, named presets.

One :class:`CMDConfig` describes the autoencoder (section 3.2, Table 5), the content-frame diffusion
model (eq. 7, Table 7) and the motion diffusion model (eq. 8, Table 6), because the three must agree
on the shapes they exchange: the content frame ``(C, H, W)`` and the motion latents
``z_x (D, L, H')``, ``z_y (D, L, W')`` with ``H' = H / ae_patch``, ``W' = W / ae_patch``. Every stage's
checkpoint stores the whole config (``to_dict``), so the sampler can check that the three checkpoints
fit together.

``channels``/``height``/``width`` are what the CMD autoencoder sees: pixels (3 channels) or the
latents of a frozen image autoencoder (Stable Diffusion: 4 channels at 1/8 resolution, section 4.1).

Presets:

* ``"tiny"``: CPU minutes: 8 RGB frames of 24x32 pixels (non-square on purpose), a 2+2-layer
  TimeSformer autoencoder of width 64 with patch 4 and ``D = 4`` whose content-frame logits are
  shared per patch (per-pixel logits start noisy and speckle the content frame of a model trained
  for four minutes), a small ADM U-Net content model (c0 32, widths x1/x2/x2, 1.2 M parameters:
  after the same CPU minutes its samples are smoother and hold an object in every class, where a
  DiT's are blocky and nearly empty for the thin shapes), a small motion DiT, the 5 shape classes
  of :class:`~reference_models.common.MovingShapes`;
* ``"small"``: 16 RGB frames of 64x64 for one GPU;
* ``"ucf101"``: Tables 5-7 for UCF-101 on SD latents: 16 frames of 4x32x32, autoencoder patch 2,
  ``C' = 384``, ``D = 8``, depth 12, 8 heads of 64; content model DiT-XL/2 (Table 7); motion model
  DiT-L/2 with content-frame patch 4 (Table 6), 101 classes;
* ``"webvid_sd15"`` / ``"webvid_sd21"``: the WebVid rows of Tables 5-6: DiT-XL/2 motion models with
  content patch 4 / 8, text conditioning through a pooled OpenCLIP ViT-H vector (1024), 4x32x32 and
  4x32x64 latents. Their content model is Stable Diffusion fine-tuned (the diffusers adapter); the
  ``content_*`` fields then describe the DiT one would train instead.

Table 5 lists "Height Width (H/H', W/W')" as 32 and 32 (64 for SD2.1) with input patch (2, 2); we
read 32 / 64 as the latent size the autoencoder takes (``height``/``width``), so ``H' = 16``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from vdblocks.diffusion import DiffusionSpec

from ..common.config import (
    ConfigBase,
    check_config_fractions,
    check_config_ints,
    get_preset,
    is_int,
    is_number,
)

__all__ = ["DIT_DIFFUSION", "DIT_SIZES", "PRESETS", "CMDConfig", "get_config", "with_dit"]

# DiT's model sizes (DiT Table 1): width, depth, heads. "/2" names the patch size.
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}

DIT_DIFFUSION = DiffusionSpec(
    schedule="linear", num_train_steps=1000, beta_start=1e-4, beta_end=0.02, prediction_type="epsilon", clip_sample=True
)
"""DiT's diffusion (1000 linear steps 1e-4 -> 0.02, epsilon) with the content frame's ``x_0``
clipped as pixels are: the default. The SD-latent presets turn the clipping off."""


@dataclass(frozen=True)
class CMDConfig(ConfigBase):
    """Everything that defines a CMD system.

    Data: ``channels`` (C), ``frames`` (L), ``height``/``width`` (H, W) of the autoencoder's input;
    ``num_classes`` (None: no labels; the null class for guidance is index ``num_classes``),
    ``text_dim`` (width of a pooled text embedding, None: no text), ``cond_dropout`` (probability of
    training on the null condition, for classifier-free guidance).

    Autoencoder (section 3.2, Table 5): ``ae_patch`` (H/H'), ``ae_dim`` (C'), ``ae_depth`` (blocks
    of each TimeSformer, encoder and decoder), ``ae_heads``, ``ae_dim_head``, ``motion_channels`` (D),
    ``ae_pixel_weights`` (per-pixel content-frame logits; False shares one logit per patch).

    Content-frame model (eq. 7): ``content_model`` is ``"dit"`` (the paper's image DiT:
    ``content_dit_patch``, ``content_dit_dim``, ``content_dit_depth``, ``content_dit_heads``) or
    ``"unet"`` (an ADM U-Net: ``content_unet_channels`` c0, ``content_unet_mult`` per-level width
    multipliers, ``content_unet_blocks`` res blocks per level, ``content_unet_attention`` the
    downsampling factors with self-attention, ``content_unet_heads``). A fine-tuned diffusers model
    replaces either (``train --diffusers-content``).

    Motion DiT (eq. 8, Table 6): ``motion_patch`` (patch of the motion latents), ``content_patch``
    (patch of the content frame fed as dense condition, "Key. patch size"), ``motion_dim``,
    ``motion_depth``, ``motion_heads``. ``mlp_ratio`` for both DiTs.

    Diffusion: ``diffusion``, the :class:`~vdblocks.diffusion.DiffusionSpec` of both diffusion
    models (:data:`DIT_DIFFUSION`, DiT's, by default): one schedule and one prediction type
    (``"epsilon"`` as the paper's DiTs; ``tiny`` predicts the velocity: a model trained for CPU
    minutes has a noise error near 0.1, which the first DDIM steps multiply by
    ``sqrt((1 - abar) / abar) ~ 156`` on the way to ``x_0``). Its ``clip_sample`` is the content
    model's: on in pixel space (``channels`` 1 or 3, to the fitted normaliser's bound when there is
    one), off on SD latents. The motion model always clips its ``x_0`` estimate to its normaliser's
    bound (the largest value seen in training; ``[-1, 1]`` before it is fitted), whatever the spec
    says.
    """

    channels: int = 3
    frames: int = 8
    height: int = 24
    width: int = 32
    num_classes: int | None = 5
    text_dim: int | None = None
    cond_dropout: float = 0.1
    ae_patch: int = 4
    ae_dim: int = 64
    ae_depth: int = 2
    ae_heads: int = 4
    ae_dim_head: int = 16
    motion_channels: int = 4
    ae_pixel_weights: bool = True
    content_model: str = "dit"
    content_dit_patch: int = 4
    content_dit_dim: int = 128
    content_dit_depth: int = 4
    content_dit_heads: int = 4
    content_unet_channels: int = 64
    content_unet_mult: tuple[int, ...] = (1, 2, 2)
    content_unet_blocks: int = 2
    content_unet_attention: tuple[int, ...] = (4,)
    content_unet_heads: int = 4
    motion_patch: int = 2
    content_patch: int = 4
    motion_dim: int = 128
    motion_depth: int = 4
    motion_heads: int = 4
    mlp_ratio: float = 4.0
    diffusion: DiffusionSpec = DIT_DIFFUSION

    _tuple_fields: ClassVar[tuple[str, ...]] = ("content_unet_mult", "content_unet_attention")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config_ints(
            self,
            (
                "channels",
                "frames",
                "height",
                "width",
                "ae_patch",
                "ae_dim",
                "ae_depth",
                "ae_heads",
                "ae_dim_head",
                "motion_channels",
                "content_dit_patch",
                "content_dit_dim",
                "content_dit_depth",
                "content_dit_heads",
                "motion_patch",
                "content_patch",
                "motion_dim",
                "motion_depth",
                "motion_heads",
            ),
        )
        check_config_ints(self, ("num_classes", "text_dim"), optional=True)
        if self.content_model not in ("dit", "unet"):
            raise ValueError(f"expected content_model 'dit' or 'unet', got {self.content_model!r}")
        check_config_ints(self, ("content_unet_channels", "content_unet_blocks", "content_unet_heads"))
        for name in ("content_unet_mult", "content_unet_attention"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(is_int(v) and v > 0 for v in value):
                raise ValueError(f"expected {name} to be a tuple of positive ints, got {value!r}")
        if not self.content_unet_mult:
            raise ValueError("expected content_unet_mult to name at least one level")
        widths = [self.content_unet_channels * m for m in self.content_unet_mult]
        if any(w % self.content_unet_heads for w in widths):
            raise ValueError(
                f"expected every U-Net width {widths} divisible by content_unet_heads={self.content_unet_heads}"
            )
        check_config_fractions(self, ("cond_dropout",))
        if not isinstance(self.ae_pixel_weights, bool):
            raise ValueError(f"expected ae_pixel_weights to be a bool, got {self.ae_pixel_weights!r}")
        if not is_number(self.mlp_ratio) or not self.mlp_ratio > 0:
            raise ValueError(f"expected mlp_ratio > 0, got {self.mlp_ratio!r}")
        for name in ("ae_dim", "content_dit_dim", "motion_dim"):
            if getattr(self, name) % 4:
                raise ValueError(f"expected {name} divisible by 4 (2D sin-cos positions), got {getattr(self, name)}")
        for dim, heads in (("content_dit_dim", "content_dit_heads"), ("motion_dim", "motion_heads")):
            if getattr(self, dim) % getattr(self, heads):
                raise ValueError(f"expected {dim}={getattr(self, dim)} divisible by {heads}={getattr(self, heads)}")
        self.check_size(self.frames, self.height, self.width)

    @classmethod
    def legacy_clip_sample(cls, data: Any) -> bool:
        """Configs saved before the spec clipped the content frame's ``x_0`` in pixel space (1 or 3 channels)."""
        return data.get("channels", cls.channels) in (1, 3)

    def check_size(self, frames: int, height: int, width: int) -> None:
        """Raise ``ValueError`` unless every patch divides its axis for a ``frames x height x width`` input.

        ``H, W`` by ``ae_patch``, ``content_dit_patch`` (for the DiT content model) and
        ``content_patch``; ``L, H', W'`` by ``motion_patch`` (the motion DiT patches the ``(L, H')``
        and ``(L, W')`` planes).
        """
        rules = [
            ("height", height, self.ae_patch, "ae_patch"),
            ("width", width, self.ae_patch, "ae_patch"),
            *(
                [
                    ("height", height, self.content_dit_patch, "content_dit_patch"),
                    ("width", width, self.content_dit_patch, "content_dit_patch"),
                ]
                if self.content_model == "dit"
                else []
            ),
            ("height", height, self.content_patch, "content_patch"),
            ("width", width, self.content_patch, "content_patch"),
            ("frames", frames, self.motion_patch, "motion_patch"),
        ]
        for name, size, patch, patch_name in rules:
            if size % patch:
                raise ValueError(f"expected {name}={size} divisible by {patch_name}={patch}")
        for name, size in (("height", height), ("width", width)):
            if (size // self.ae_patch) % self.motion_patch:
                raise ValueError(
                    f"expected {name} / ae_patch = {size // self.ae_patch} divisible by motion_patch={self.motion_patch}"
                    f" (the motion latents live on the {name} / ae_patch grid)"
                )

    @property
    def latent_height(self) -> int:
        """``H' = height / ae_patch``: the length of ``z_x``'s spatial axis."""
        return self.height // self.ae_patch

    @property
    def latent_width(self) -> int:
        """``W' = width / ae_patch``: the length of ``z_y``'s spatial axis."""
        return self.width // self.ae_patch

    @property
    def content_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of a content frame."""
        return (self.channels, self.height, self.width)

    @property
    def motion_shape(self) -> tuple[int, int, int]:
        """``(D, L, H' + W')``: ``z_x`` and ``z_y`` packed along the last axis (the motion model's target)."""
        return (self.motion_channels, self.frames, self.latent_height + self.latent_width)


def with_dit(
    cfg: CMDConfig, motion: str | None = None, content: str | None = None, content_patch: int | None = None
) -> CMDConfig:
    """``cfg`` with DiT-``S``/``B``/``L``/``XL`` widths for the motion and/or content model.

    Naming a content size also makes the content model a DiT (``content_model="dit"``).

    ``content_patch`` sets the motion model's content-frame patch (Table 4c: 4, 8, 16).
    """
    changes: dict[str, Any] = {}
    for which, size in (("motion", motion), ("content_dit", content)):
        if size is None:
            continue
        if size not in DIT_SIZES:
            raise ValueError(f"expected a DiT size in {sorted(DIT_SIZES)}, got {size!r}")
        dim, depth, heads = DIT_SIZES[size]
        changes.update({f"{which}_dim": dim, f"{which}_depth": depth, f"{which}_heads": heads})
        if which == "content_dit":
            changes["content_model"] = "dit"
    if content_patch is not None:
        changes["content_patch"] = content_patch
    return cfg.replace(**changes)


def _paper(**kw: Any) -> CMDConfig:
    base = dict(
        channels=4,
        frames=16,
        height=32,
        width=32,
        ae_patch=2,
        ae_dim=384,
        ae_depth=12,
        ae_heads=8,
        ae_dim_head=64,
        motion_channels=8,
        content_dit_patch=2,
        motion_patch=2,
        cond_dropout=0.1,
        diffusion=DIT_DIFFUSION.replace(clip_sample=False),  # SD latents: not bounded by 1
    )
    base.update(kw)
    return CMDConfig(**base)


PRESETS: dict[str, CMDConfig] = {
    "tiny": CMDConfig(
        diffusion=DIT_DIFFUSION.replace(prediction_type="v_prediction"),
        ae_pixel_weights=False,
        content_model="unet",
        content_unet_channels=32,
        content_unet_mult=(1, 2, 2),
        content_unet_blocks=1,
    ),
    "small": CMDConfig(
        frames=16,
        height=64,
        width=64,
        ae_patch=4,
        ae_dim=256,
        ae_depth=4,
        ae_heads=4,
        ae_dim_head=64,
        motion_channels=8,
        content_dit_patch=2,
        content_dit_dim=384,
        content_dit_depth=12,
        content_dit_heads=6,
        content_patch=4,
        motion_dim=384,
        motion_depth=12,
        motion_heads=6,
    ),
    "ucf101": with_dit(_paper(num_classes=101), motion="L", content="XL", content_patch=4),
    "webvid_sd15": with_dit(_paper(num_classes=None, text_dim=1024), motion="XL", content="XL", content_patch=4),
    "webvid_sd21": with_dit(
        _paper(num_classes=None, text_dim=1024, width=64), motion="XL", content="XL", content_patch=8
    ),
}


def get_config(name: str, **overrides: Any) -> CMDConfig:
    """The preset ``name`` with ``overrides`` applied (validated like any config)."""
    return get_preset(PRESETS, name, **overrides)
