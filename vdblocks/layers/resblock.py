"""The diffusion U-Net residual block, configurable to Stable Diffusion's, MCVD's BigGAN++ and ADM's.

The three blocks share one skeleton, two ``GroupNorm -> SiLU -> conv3x3`` steps around a skip, and
differ only in where the conditioning embedding enters, whether the block resamples, which shortcut
it has and how its norms are sized. :class:`ResBlock2d` makes each difference an argument, with the
parameters, state-dict layout and MACs of each original; the formulas are in its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..validation import check_positive_int, check_tensor
from .modulation import ScaleShiftGroupNorm
from .norm import check_group_norm_input, group_norm, num_groups_for
from .pointwise import PointwiseConv2d
from .resample import Resample2d, ResampleMode

__all__ = ["ResBlock2d"]

EmbMode = Literal["bias", "scale_shift", "scale_shift_both"]
_EMB_MODES = ("bias", "scale_shift", "scale_shift_both")
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


class ResBlock2d(nn.Module):
    """Residual block of a diffusion U-Net: ``x (b, c, h, w), emb (b, emb_dim) -> (b, c_out, h', w')``.

    ``c = in_channels``, ``c_out = out_channels`` (default ``c``); ``h' = h`` without resampling,
    ``2h`` for ``resample="up"``, ``h // 2`` for ``"down"`` (likewise ``w'``). With ``R`` the
    resampling (identity if none), ``GN`` a GroupNorm, ``GN_e(h) = GN(h) (1 + s) + t`` with
    ``[s, t] = Linear(SiLU(emb))`` (:class:`~vdblocks.layers.modulation.ScaleShiftGroupNorm`, one
    projection per norm) and ``D`` dropout, ``emb_mode`` picks where the embedding enters:

    * ``"bias"``: ``h = conv1(R(SiLU(GN(x)))) + Linear(SiLU(emb))``, ``h = conv2(D(SiLU(GN(h))))``
      (DDPM's block, as in Stable Diffusion);
    * ``"scale_shift"``: ``h = conv1(R(SiLU(GN(x))))``, ``h = conv2(D(SiLU(GN_e(h))))`` (ADM's
      ``use_scale_shift_norm``);
    * ``"scale_shift_both"``: ``h = conv1(R(SiLU(GN_e(x))))``, ``h = conv2(D(SiLU(GN_e(h))))``
      (score_sde's / MCVD's BigGAN++ block with GroupNorm scale-shift);

    then ``out = shortcut(R(x)) + h``, divided by ``sqrt(2)`` with ``skip_rescale``. conv1 and conv2
    are 3x3 convolutions (conv1 ``c -> c_out``); the shortcut is a 1x1 convolution
    (:class:`~vdblocks.layers.pointwise.PointwiseConv2d`, ``nn.Conv2d``'s parameters and keys) where
    it projects, else the identity. Each GroupNorm has the largest group count that divides its
    channels and is at most ``norm_groups`` (or ``norm_groups(channels)`` when it is a function).

    The configurations of the three codebases (``c_out`` and ``dropout`` as they like):

    * **Stable Diffusion** (ETC's U-Net): ``emb_mode="bias", norm_groups=32, eps=1e-5``, diffusers'
      ``ResnetBlock2D`` of SD 2.1 layer for layer (its ``time_emb_proj`` is ``emb_proj``, its
      ``conv_shortcut`` is ``shortcut``).
    * **MCVD / NCSN++ BigGAN++** (EVDM's baseline): ``emb_mode="scale_shift_both",
      resample=None | "up" | "down", fir=True, skip_rescale=True, eps=1e-6``, MCVD's
      ``ResnetBlockBigGANppGN``; its shortcut projects when the width changes or the block
      resamples (``project_shortcut=None``). Departures from MCVD's release: our GroupNorms keep
      their affine parameters under the scale-shift (no option), and the release uses
      ``eps=1e-5`` and at most ``min(c // 4, 32)`` groups (``eps`` and a ``norm_groups`` function
      reproduce those two).
    * **ADM** (PVDM's and CMD's U-Nets): ``emb_mode="scale_shift", eps=1e-6``, guided-diffusion's
      ``ResBlock`` with ``use_scale_shift_norm=True`` (ADM has 32 groups; PVDM and CMD pass their
      ``small_map_groups`` rule, at least two channels per group, as ``norm_groups``).

    Args:
        in_channels: ``c``.
        out_channels: ``c_out`` (default ``c``).
        emb_dim: width of ``emb``.
        emb_mode: ``"bias"``, ``"scale_shift"`` or ``"scale_shift_both"`` (see above).
        dropout: probability of ``D``.
        resample: ``None``, ``"up"`` or ``"down"``: :class:`~vdblocks.layers.resample.Resample2d` of
            both the branch (after the first activation) and the shortcut's input.
        fir: resample with score_sde's FIR filter ``[1, 3, 3, 1]`` (else nearest / average pooling).
        project_shortcut: ``None`` projects iff ``c != c_out`` or the block resamples; ``True``
            always projects; ``False`` demands ``c == c_out`` (the skip is ``R(x)``).
        skip_rescale: divide the sum by ``sqrt(2)`` (NCSN++'s ``skip_rescale``).
        norm_groups: the largest group count of each GroupNorm, or a function of its channel count
            giving that bound.
        eps: every GroupNorm's epsilon.

    Attributes: ``norm1``, ``conv1``, ``emb_proj`` (``"bias"`` only, else ``None``), ``norm2``,
    ``dropout``, ``conv2``, ``shortcut``, ``resample`` (``None`` without resampling). ``norm1`` and
    ``norm2`` are ``nn.GroupNorm`` or ``ScaleShiftGroupNorm`` as ``emb_mode`` says.
    :meth:`zero_residual_` zeroes ``conv2``, so the block starts as its (rescaled) shortcut (DiT's
    and ADM's zero-initialised residual outputs); a model zeroes the scale-shift projections itself
    if it wants them to start off.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        emb_dim: int,
        emb_mode: EmbMode = "scale_shift",
        dropout: float = 0.0,
        resample: ResampleMode | None = None,
        fir: bool = True,
        project_shortcut: bool | None = None,
        skip_rescale: bool = False,
        norm_groups: int | Callable[[int], int] = 32,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = out = check_positive_int(
            in_channels if out_channels is None else out_channels, "out_channels"
        )
        self.emb_dim = check_positive_int(emb_dim, "emb_dim")
        if emb_mode not in _EMB_MODES:
            raise ValueError(f"expected emb_mode to be one of {_EMB_MODES}, got {emb_mode!r}")
        if resample not in (None, "up", "down"):
            raise ValueError(f"expected resample to be None, 'up' or 'down', got {resample!r}")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ValueError(f"expected dropout in [0, 1), got {dropout!r}")
        if project_shortcut not in (None, True, False):
            raise TypeError(f"expected project_shortcut to be None, True or False, got {project_shortcut!r}")
        if project_shortcut is False and in_channels != out:
            raise ValueError(f"project_shortcut=False needs in_channels == out_channels, got {in_channels} and {out}")
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"expected eps > 0, got {eps!r}")
        if not callable(norm_groups):
            check_positive_int(norm_groups, "norm_groups")
        self.emb_mode = emb_mode
        self.skip_rescale = bool(skip_rescale)

        def groups(channels: int) -> int:
            bound = norm_groups(channels) if callable(norm_groups) else norm_groups
            return num_groups_for(channels, check_positive_int(bound, f"norm_groups({channels})"))

        def norm(channels: int, modulated: bool) -> nn.Module:
            if modulated:
                return ScaleShiftGroupNorm(channels, emb_dim, max_groups=groups(channels), eps=eps)
            return group_norm(channels, groups(channels), eps=eps)

        self.norm1 = norm(in_channels, emb_mode == "scale_shift_both")
        self.resample = Resample2d(resample, fir) if resample is not None else None
        self.conv1 = nn.Conv2d(in_channels, out, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out) if emb_mode == "bias" else None
        self.norm2 = norm(out, emb_mode != "bias")
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1)
        if project_shortcut is None:
            project_shortcut = in_channels != out or resample is not None
        # A bmm pointwise convolution (and in-place activations and rescale below): the eager
        # economies EVDM's BRP has, so that speed comparisons compare architectures.
        self.shortcut = PointwiseConv2d(in_channels, out) if project_shortcut else nn.Identity()
        self.act = nn.SiLU(inplace=True)  # its inputs are the norms' fresh outputs, kept by nothing

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(b, c, h, w)", sizes={"c": self.in_channels}, like=self)
        # One batch with x; a downsampling block's h, w >= 2 is Resample2d's check.
        check_tensor(emb, "emb", "(b, emb_dim)", sizes={"b": x.shape[0], "emb_dim": self.emb_dim}, like=self)

        check_group_norm_input(self.norm1, x)
        if self.emb_mode == "scale_shift_both":
            h = self.act(self.norm1(x, emb))  # b c h w
        else:
            h = self.act(self.norm1(x))  # b c h w
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)  # b c h' w'
        check_group_norm_input(self.norm2, h)  # a 2x2 map downsampled to 1x1, one channel per group
        h = self.conv1(h)  # b c_out h' w'
        if self.emb_proj is not None:
            h = h + rearrange(self.emb_proj(F.silu(emb)), "b c -> b c 1 1")  # b c_out h' w'
            h = self.norm2(h)
        else:
            h = self.norm2(h, emb)
        h = self.conv2(self.dropout(self.act(h)))  # b c_out h' w'
        out = torch.add(h, self.shortcut(x))  # b c_out h' w'
        return out.mul_(_INV_SQRT2) if self.skip_rescale else out  # in place: add keeps no output

    @torch.no_grad()
    def zero_residual_(self) -> None:
        """Zero the branch's last convolution, so the block starts as its (rescaled) shortcut."""
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels} -> {self.out_channels}, emb_dim={self.emb_dim}, emb_mode={self.emb_mode!r}, "
            f"skip_rescale={self.skip_rescale}"
        )
