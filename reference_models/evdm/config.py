"""EVDM's configuration: one frozen dataclass, the paper's presets, JSON round trip.

One :class:`EVDMConfig` describes both the MCVD "concat" baseline and every EVDM variant, because
EVDM is MCVD's U-Net with its blocks swapped (section 3): the switches ``use_brp``,
``temporal_enhancement``, ``mixed_attention``, ``shortcut_optimization``, ``channel_split`` and
``bottleneck_ratio`` are the columns of Table 8 (BRP, BRP-eh, MSM, SO, Split, delta). The config is
saved with every checkpoint (``to_dict`` / ``from_dict``), as nanoGPT's ``GPTConfig`` does.

Presets are named ``"{dataset}_{variant}"``:

* variants, the rows of Table 8: ``mcvd`` (the baseline), ``brp``, ``brp_eh``, ``brp_msm``,
  ``evdm``, ``evdm_so``, ``evdm_split``, ``evdm_so_split``, ``evdm_l`` (:data:`VARIANTS`);
* datasets, the rows of Table 2 plus one for CPU training (:data:`DATASETS`). Frame counts and
  widths are those of the MCVD runs EVDM compares with (MCVD's ``configs/*.yml`` with the overrides
  of its ``example_scripts/final/training_scripts.sh``):

  ========  ========  ==================  ====  =====  ========  =============================
  dataset   c_0=ngf   frames past/cur/fut  chan  size   head ch   MCVD run (Table 2's MCVD row)
  ========  ========  ==================  ====  =====  ========  =============================
  smmnist   64        5 / 5 / 0           1     64     64        smmnist_big_5c5 (prediction)
  kth       96        10 / 5 / 0          1     64     96        kth64_big_5c10 (prediction)
  bair      192       1 / 5 / 1           3     64     192       bair64_big192_5c1 "pf-mask"
  ucf       288       4 / 4 / 0           3     64     288       ucf101 big288_4c4 p-mask
  tiny      16        2 / 2 / 1           1     32     16        (none: CPU smoke training)
  ========  ========  ==================  ====  =====  ========  =============================

  BAIR's row is the past-future-mask model of Table 3 (FVD 89.5 in both tables; "trained on 5
  frames ... based on one frame"), so one past and one future frame. UCF's is unconditional
  generation with MCVD's prob-mask on 4 past frames. The mask probabilities follow those runs
  (0 for the SM-MNIST and KTH prediction models); eq. 7's unified model, which does prediction,
  generation and interpolation at once, is ``prob_mask_past = prob_mask_future = 0.5`` with
  ``num_future > 0``. None of this changes the parameter or MAC counts.

Every model uses ``channel_mult = (1, 2, 3, 4)`` (the paper's ``M_n``), 2 res blocks per level,
attention at layers 2-4 (``attn_levels = (1, 2, 3)``: 32, 16 and 8 pixels at 64x64) and
``lambda = 2`` (section 4.3); the time embedding is ``4 c_0`` wide (MCVD's ``nf * 4``).

Readings taken where the paper leaves a gap (each chosen to match Tables 1, 2 and 8):

* FAVOR+ random features: eq. 13 writes ``Q', K' in R^{B' x L x d}``, i.e. as many features as the
  head width, so ``favor_features = None`` means ``r = d``. performer-pytorch's default
  ``d ln d`` (438 for ``d = 96``) would make FAVOR+ at 32x32 almost as costly as exact attention
  and could not give Table 1's attention savings.
* ``head_channels``: eq. 14 only fixes ``d = C / h_n``; we keep MCVD's ``n_head_channels`` of each
  run (equal to ``c_0``), which with ``lambda = 2`` puts FAVOR+ at 32x32 and 16x16 and exact
  attention at 8x8 for KTH, the pattern of Table 1's attention column.
* Table 2's UCF figures are at batch 32 (MCVD trains UCF with batch 32; every UCF figure in
  Table 2 is half of 9x the KTH one), see :data:`PAPER_BATCH`.
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
    "EVDMConfig",
    "MCVD_DIFFUSION",
    "DATASETS",
    "VARIANTS",
    "PAPER_BATCH",
    "PRESETS",
    "get_config",
]

MCVD_DIFFUSION = DiffusionSpec(
    schedule="linear", num_train_steps=1000, beta_start=1e-4, beta_end=0.02, prediction_type="epsilon", clip_sample=True
)
"""MCVD's (and EVDM's) diffusion: 1000 linear steps 1e-4 -> 0.02, epsilon, ``x_0`` clipped to
``[-1, 1]`` (pixel space)."""


@dataclass(frozen=True)
class EVDMConfig(ConfigBase):
    """Everything that defines an MCVD-baseline or EVDM model and its diffusion.

    Data: ``channels`` (1 grayscale, 3 RGB), ``image_size`` (training frame size; any size that is
    a multiple of :attr:`size_multiple` runs), ``num_frames`` (current frames ``T`` the model
    denoises), ``num_past`` / ``num_future`` (conditioning frames ``P`` / ``F``, stacked on channels
    as MCVD "concat" does), ``prob_mask_past`` / ``prob_mask_future`` (eq. 7's ``p_mask``: chance
    that training drops a sample's past / future frames).

    U-Net (MCVD's NCSN++ "unetmore"): ``base_channels`` (``c_0``, MCVD's ``ngf``), ``channel_mult``
    (``M_n``), ``num_res_blocks`` per level, ``attn_levels`` (levels with self-attention; the
    middle block always attends), ``head_channels`` (``d``, MCVD's ``n_head_channels``),
    ``emb_mult`` (embedding width ``E = emb_mult * c_0``), ``dropout``, ``fir_resample`` (MCVD's
    FIR ``[1, 3, 3, 1]`` up/down sampling; False: nearest / average pooling).

    EVDM switches (Table 8): ``use_brp`` (every res block, up/down ones included, is a
    :class:`~vdblocks.BottleneckResidualPathway`), ``temporal_enhancement`` ("BRP-eh": eq. 9's
    scale-shift of the bottleneck and the past-frame term of ``G_emb(p, t)``), ``mixed_attention``
    (MSM, eq. 14), ``shortcut_optimization`` (SO: grouped 1x1 shortcut + channel shuffle, section
    3.4), ``channel_split`` (Split, Figure 2), ``bottleneck_ratio`` (``delta``), ``attn_threshold``
    (``lambda``), ``favor_features`` (FAVOR+ random features ``r``; None: ``r = d``),
    ``shortcut_groups`` (groups of the SO shortcut), ``past_encoder_channels`` (width of the
    past-frame encoder of ``G_emb``; None: ``c_0``).

    Diffusion: ``diffusion``, a :class:`~vdblocks.diffusion.DiffusionSpec`; :data:`MCVD_DIFFUSION`
    (1000 linear steps from 1e-4 to 0.02, the noise predicted as MCVD and EVDM's DDPM do, ``x_0``
    clipped to ``[-1, 1]`` when sampling pixels) by default. The CPU ``tiny`` presets predict the
    velocity (``prediction_type="v_prediction"``), because a model trained for minutes has a noise
    error near 0.1 at every level, which the first sampling steps multiply by
    ``sqrt((1 - abar) / abar) ~ 156`` on the way to ``x_0``; a velocity error reaches ``x_0``
    undivided.
    """

    channels: int = 1
    image_size: int = 64
    num_frames: int = 5
    num_past: int = 10
    num_future: int = 0
    prob_mask_past: float = 0.0
    prob_mask_future: float = 0.0
    base_channels: int = 96
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attn_levels: tuple[int, ...] = (1, 2, 3)
    head_channels: int = 96
    emb_mult: int = 4
    dropout: float = 0.1
    fir_resample: bool = True
    use_brp: bool = False
    temporal_enhancement: bool = False
    mixed_attention: bool = False
    shortcut_optimization: bool = False
    channel_split: bool = False
    bottleneck_ratio: int = 4
    attn_threshold: float = 2.0
    favor_features: int | None = None
    shortcut_groups: int = 4
    past_encoder_channels: int | None = None
    diffusion: DiffusionSpec = MCVD_DIFFUSION

    _tuple_fields: ClassVar[tuple[str, ...]] = ("channel_mult", "attn_levels")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config_ints(
            self,
            (
                "channels",
                "image_size",
                "num_frames",
                "base_channels",
                "num_res_blocks",
                "head_channels",
                "emb_mult",
                "bottleneck_ratio",
                "shortcut_groups",
            ),
        )
        check_config_ints(self, ("num_past", "num_future"), minimum=0)
        check_config_ints(self, ("favor_features", "past_encoder_channels"), optional=True)
        for name in (
            "use_brp",
            "temporal_enhancement",
            "mixed_attention",
            "shortcut_optimization",
            "channel_split",
            "fir_resample",
        ):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"expected {name} to be a bool, got {getattr(self, name)!r}")
        mult = self.channel_mult
        check_channel_mult(mult)
        levels = self.attn_levels
        if not isinstance(levels, tuple) or not all(is_int(i) and 0 <= i < len(mult) for i in levels):
            raise ValueError(f"expected attn_levels to be a tuple of level indices in [0, {len(mult)}), got {levels!r}")
        if self.image_size % self.size_multiple:
            raise ValueError(
                f"expected image_size to be a multiple of 2 ** (len(channel_mult) - 1) = {self.size_multiple}, "
                f"got {self.image_size}"
            )
        # The middle block (at the last level's width) always attends; MCVD uses one head when the
        # width is below head_channels, else width / head_channels heads.
        for level in (*levels, len(mult) - 1):
            width = self.base_channels * mult[level]
            if width >= self.head_channels and width % self.head_channels:
                raise ValueError(
                    f"expected the width of attention level {level} ({width} = base_channels * "
                    f"channel_mult[{level}]) to be divisible by head_channels={self.head_channels}"
                )
        if not self.use_brp:
            for name in ("temporal_enhancement", "shortcut_optimization", "channel_split"):
                if getattr(self, name):
                    raise ValueError(f"{name}=True modifies the bottleneck residual pathway and needs use_brp=True")
        if self.use_brp and self.base_channels // self.bottleneck_ratio < 1:
            raise ValueError(
                f"expected base_channels >= bottleneck_ratio (the bottleneck keeps c_0 // delta channels), "
                f"got base_channels={self.base_channels}, bottleneck_ratio={self.bottleneck_ratio}"
            )
        if self.shortcut_optimization and self.base_channels % self.shortcut_groups:
            raise ValueError(
                f"expected shortcut_groups to divide base_channels (every width is a multiple of c_0), "
                f"got shortcut_groups={self.shortcut_groups}, base_channels={self.base_channels}"
            )
        check_config_fractions(self, ("dropout",), below_one=True)
        check_config_fractions(self, ("prob_mask_past", "prob_mask_future"))
        if not is_number(self.attn_threshold) or not self.attn_threshold > 0:
            raise ValueError(f"expected attn_threshold > 0, got {self.attn_threshold!r}")

    @property
    def num_levels(self) -> int:
        """Resolution levels of the U-Net (``len(channel_mult)``; the paper's Layer 1..4)."""
        return len(self.channel_mult)

    @property
    def size_multiple(self) -> int:
        """Frame height and width must be multiples of this: ``2 ** (num_levels - 1)``."""
        return 2 ** (self.num_levels - 1)

    @property
    def emb_dim(self) -> int:
        """Width ``E`` of the timestep (+ past-frame) embedding: ``emb_mult * c_0``."""
        return self.emb_mult * self.base_channels

    @property
    def in_channels(self) -> int:
        """Channels of the U-Net input: current, past and future frames stacked, ``c (T + P + F)``."""
        return self.channels * (self.num_frames + self.num_past + self.num_future)

    @property
    def out_channels(self) -> int:
        """Channels of the U-Net output: the noise of the current frames, ``c T``."""
        return self.channels * self.num_frames

    @property
    def variant(self) -> str:
        """The Table 8 row these switches make (a key of :data:`VARIANTS`), or ``"custom"``."""
        for name, flags in VARIANTS.items():
            if all(getattr(self, k) == v for k, v in {**_NO_EVDM, **flags}.items()):
                return name
        return "custom"


# Table 8's columns for the baseline, then each row's changes from it.
_NO_EVDM: dict[str, Any] = dict(
    use_brp=False,
    temporal_enhancement=False,
    mixed_attention=False,
    shortcut_optimization=False,
    channel_split=False,
    bottleneck_ratio=4,
)
_BRP = dict(use_brp=True)
VARIANTS: dict[str, dict[str, Any]] = {
    "mcvd": {},
    "brp": {**_BRP},
    "brp_eh": {**_BRP, "temporal_enhancement": True},
    "brp_msm": {**_BRP, "mixed_attention": True},
    "evdm": {**_BRP, "temporal_enhancement": True, "mixed_attention": True},
    "evdm_so": {**_BRP, "temporal_enhancement": True, "mixed_attention": True, "shortcut_optimization": True},
    "evdm_split": {**_BRP, "temporal_enhancement": True, "mixed_attention": True, "channel_split": True},
    "evdm_so_split": {
        **_BRP,
        "temporal_enhancement": True,
        "mixed_attention": True,
        "shortcut_optimization": True,
        "channel_split": True,
    },
    "evdm_l": {
        **_BRP,
        "temporal_enhancement": True,
        "mixed_attention": True,
        "shortcut_optimization": True,
        "channel_split": True,
        "bottleneck_ratio": 8,
    },
}
"""Table 8's rows as switch settings (applied over the baseline's)."""

DATASETS: dict[str, dict[str, Any]] = {
    "smmnist": dict(
        channels=1, image_size=64, num_past=5, num_frames=5, num_future=0, base_channels=64, head_channels=64
    ),
    "kth": dict(channels=1, image_size=64, num_past=10, num_frames=5, num_future=0, base_channels=96, head_channels=96),
    "bair": dict(
        channels=3,
        image_size=64,
        num_past=1,
        num_frames=5,
        num_future=1,
        prob_mask_past=0.5,
        prob_mask_future=0.5,
        base_channels=192,
        head_channels=192,
    ),
    "ucf": dict(
        channels=3,
        image_size=64,
        num_past=4,
        num_frames=4,
        num_future=0,
        prob_mask_past=0.5,
        base_channels=288,
        head_channels=288,
    ),
    "tiny": dict(
        channels=1,
        image_size=32,
        num_past=2,
        num_frames=2,
        num_future=1,
        prob_mask_past=0.5,
        prob_mask_future=0.5,
        base_channels=16,
        head_channels=16,
        dropout=0.0,
        diffusion=MCVD_DIFFUSION.replace(prediction_type="v_prediction"),
    ),
}
"""Data and width settings of Table 2's data sets (MCVD's runs) and of the CPU ``tiny`` preset."""

PAPER_BATCH: dict[str, int] = {"smmnist": 64, "kth": 64, "bair": 64, "ucf": 32}
"""Batch size at which the paper's GFLOPs of each data set are counted (section 4.2 says 64; the UCF
figures of Table 2 fit MCVD's UCF batch of 32, see the module docstring)."""

PRESETS: dict[str, EVDMConfig] = {
    f"{data}_{variant}": EVDMConfig(**{**_NO_EVDM, **data_kwargs, **flags})
    for data, data_kwargs in DATASETS.items()
    for variant, flags in VARIANTS.items()
}
"""Every ``"{dataset}_{variant}"`` combination, e.g. ``"kth_mcvd"``, ``"kth_evdm_l"``, ``"tiny_evdm"``."""


def get_config(name: str, **overrides: Any) -> EVDMConfig:
    """The preset ``name`` (see :data:`PRESETS`) with ``overrides`` applied (validated like any config)."""
    return get_preset(PRESETS, name, **overrides)
