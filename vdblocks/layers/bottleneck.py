"""EVDM's Bottleneck Residual Pathway (BRP, section 3.2, eqs. 8-10; options of section 3.4).

Shapes: x ``(b, c_in, h, w)`` (frames folded into channels, as in EVDM's 2D U-Net), emb ``(b, e)``
(timestep + past-frame embedding) -> ``(b, c_out, h, w)``.

One *stage* maps ``c -> c_out``:

    Y   = GN(X) * (1 + e_1) + e_2                           (eq. 8, scale-shift from emb)
    Y_b = GN(ReLU(Y) * K_1) * (1 + e'_1) + e'_2             (eq. 9, K_1: 1x1, c -> c_out / delta)
    out = [Y_b * K_3x3, Y_b * K_1x1]                        (eq. 10, concatenated along channels)

and the block is ``x -> stage_1 (c_in -> c_out) -> stage_2 (c_out -> c_out)`` plus a skip connection
("repeats the above procedure and aggregates the output with a skip connection").

How the widths work out (the paper writes ``K_1`` to ``C_0/8`` and the two path kernels as
``C_0/8 x C_0/8``, but says ``delta = 4`` for EVDM): the bottleneck has ``c_out // delta`` channels and
each of the two parallel paths produces *half of the stage output* (3x3: ``ceil(c_out/2)``, 1x1:
``floor(c_out/2)``), so each stage ends at ``c_out``. We picked this reading because it reproduces
Table 1 exactly: built into MCVD's KTH U-Net (``c_0 = 96``, ch_mult [1, 2, 3, 4], 2 blocks per level,
every BigGAN res block, up/down ones included, replaced by a BRP, emb width ``4 c_0``, scale-shift
linears counted as MCVD's are, norms without affine as in MCVD) it gives 1.66 / 4.07 / 6.99 / 11.40 M
convolution parameters per level, 24.12 M in all, the paper's numbers to the digit (MCVD's own blocks
give 2.59 / 8.23 / 16.86 / 31.14 M = 58.82 M the same way), and 232.6 G convolution MACs at batch 64
against the paper's 236.2. (Our ScaleShiftGroupNorm keeps GroupNorm's affine too: +0.04 M.) The
alternatives fall short: paths of ``c_out/delta`` each with a final 1x1 to ``c_out`` give 19.61 M, a
first stage ending at ``2 c_out/delta`` gives 19.86 M.

Temporal enhancement (the "BRP-eh" of Table 8) is eq. 9's scale-shift on the *bottleneck* features.
Table 8 puts "+BRP" at 25.4 M and "+BRP+BRP-eh" at 28.1 M; the bottleneck scale-shift linears of the
whole U-Net come to 2.70 M, exactly that gap, while dropping eq. 8's scale-shift too would remove
15.5 M (and leave the network with no timestep input at all). So ``temporal_enhancement=False`` keeps
eq. 8 and makes eq. 9's norm a plain GroupNorm; ``scale_shift_input=False`` drops eq. 8's scale-shift
as well, and with both off the block ignores ``emb``.

Eqs. 9-10 put no activation between the bottleneck norm and the two paths; we follow them. Dropout
(off by default) sits where BigGAN blocks put it: before the second stage's convolutions. The skip is
the identity when ``c_in == c_out`` (unless ``project_shortcut=True``), else a pointwise conv, or with
``shortcut="group_shuffle"`` section 3.4's shortcut optimization: a 1x1 conv in ``shortcut_groups``
groups followed by a channel shuffle (4 groups reproduce EVDM-L's Table 1 parameters together with the
channel split and ``delta = 8``). ``channel_split=True`` replaces each stage's eqs. 9-10 by
:class:`~vdblocks.layers.channel_split.ChannelSplit`, so part of each stage's input reaches its output
through a direct link. Like MCVD's blocks (skip_rescale), the sum is divided by ``sqrt(2)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..validation import check_positive_int, check_same_batch, check_tensor
from .bottleneck_conv import BottleneckConv
from .channel_split import ChannelSplit
from .modulation import ScaleShiftGroupNorm
from .norm import check_group_norm_input, group_norm
from .pointwise import PointwiseConv2d
from .shuffle import ChannelShuffle, add_channel_shuffled

__all__ = ["BottleneckResidualPathway"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)

_SHORTCUTS = ("conv", "group_shuffle")


class _BRPStage(nn.Module):
    """One stage: eq. 8 norm, ReLU, (dropout), then eqs. 9-10 or a channel split. ``(b, c, h, w) -> (b, c_out, h, w)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int | None,
        bottleneck_ratio: int,
        temporal_enhancement: bool,
        scale_shift_input: bool,
        dropout: float,
        channel_split: bool,
        shuffle_groups: int | None,
    ) -> None:
        super().__init__()
        self.scale_shift_input = scale_shift_input
        self.temporal_enhancement = temporal_enhancement
        self.norm: nn.Module = (
            ScaleShiftGroupNorm(in_channels, emb_dim) if scale_shift_input else group_norm(in_channels)
        )
        self.act = nn.ReLU(inplace=True)  # its input is the norm's fresh output, kept by nothing
        self.dropout = nn.Dropout(dropout)
        body_emb_dim = emb_dim if temporal_enhancement else None
        self.body: nn.Module
        if channel_split:
            self.body = ChannelSplit(
                in_channels,
                out_channels,
                emb_dim=body_emb_dim,
                bottleneck_ratio=bottleneck_ratio,
                shuffle_groups=shuffle_groups,
            )
        else:
            self.body = BottleneckConv(in_channels, out_channels // bottleneck_ratio, out_channels, body_emb_dim)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        y = self.norm(x, emb) if self.scale_shift_input else self.norm(x)  # b c h w
        y = self.dropout(self.act(y))  # b c h w
        return self.body(y, emb if self.temporal_enhancement else None)  # b c_out h w


class BottleneckResidualPathway(nn.Module):
    """EVDM's Bottleneck Residual Pathway: ``(b, c_in, h, w), (b, e) -> (b, c_out, h, w)``.

    ``y = (shortcut(x) + stage_2(stage_1(x, emb), emb)) / sqrt(2)`` with each stage
    ``[3x3, 1x1](GN_e(1x1(ReLU(GN_e(x)))))`` (eqs. 8-10); see the module docstring for the widths
    (bottleneck ``c_out // bottleneck_ratio``, each path half of ``c_out``) and why.

    Args:
        in_channels: ``c_in``.
        out_channels: ``c_out``; ``c_out // bottleneck_ratio >= 1`` is required.
        emb_dim: width ``e`` of the embedding (may be ``None`` only when both scale-shift options are off).
        bottleneck_ratio: EVDM's ``delta`` (4 for EVDM, 8 for EVDM-L).
        temporal_enhancement: scale-shift the bottleneck norm from ``emb`` (eq. 9, Table 8's "BRP-eh").
        scale_shift_input: scale-shift each stage's input norm from ``emb`` (eq. 8).
        dropout: dropout probability before the second stage's convolutions.
        shortcut: ``"conv"`` (pointwise conv) or ``"group_shuffle"`` (grouped 1x1 conv + channel shuffle,
            section 3.4's shortcut optimization); used whenever the skip needs a projection.
        shortcut_groups: groups of the ``"group_shuffle"`` shortcut; must divide ``c_in`` and ``c_out``.
        project_shortcut: ``None`` projects iff ``c_in != c_out``; ``True`` always projects (MCVD's
            up/down blocks do); ``False`` demands ``c_in == c_out``.
        channel_split: use :class:`ChannelSplit` (section 3.4) in place of each stage's eqs. 9-10.
        split_shuffle_groups: ``shuffle_groups`` of those channel splits (``None``: ChannelSplit's default).
        skip_rescale: divide the residual sum by ``sqrt(2)`` (MCVD's blocks, on which EVDM builds).

    Attributes: ``bottleneck_channels`` (``c_out // bottleneck_ratio``), ``needs_emb``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int | None,
        bottleneck_ratio: int = 4,
        temporal_enhancement: bool = True,
        scale_shift_input: bool = True,
        dropout: float = 0.0,
        shortcut: str = "conv",
        shortcut_groups: int = 4,
        project_shortcut: bool | None = None,
        channel_split: bool = False,
        split_shuffle_groups: int | None = None,
        skip_rescale: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.bottleneck_ratio = check_positive_int(bottleneck_ratio, "bottleneck_ratio")
        self.needs_emb = bool(temporal_enhancement or scale_shift_input)
        if emb_dim is None and self.needs_emb:
            raise ValueError(
                "expected emb_dim to be a positive int: temporal_enhancement / scale_shift_input "
                "condition on an emb of shape (b, emb_dim)"
            )
        self.emb_dim = None if emb_dim is None else check_positive_int(emb_dim, "emb_dim")
        if out_channels // bottleneck_ratio < 1:
            raise ValueError(
                f"expected out_channels >= bottleneck_ratio so the bottleneck (out_channels // "
                f"bottleneck_ratio channels) keeps at least one channel, got out_channels={out_channels}, "
                f"bottleneck_ratio={bottleneck_ratio}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"expected dropout in [0, 1), got {dropout}")
        if shortcut not in _SHORTCUTS:
            raise ValueError(f"expected shortcut to be one of {_SHORTCUTS}, got {shortcut!r}")
        self.bottleneck_channels = out_channels // bottleneck_ratio
        self.temporal_enhancement = bool(temporal_enhancement)
        self.scale_shift_input = bool(scale_shift_input)
        self.channel_split = bool(channel_split)
        self.skip_rescale = bool(skip_rescale)

        stage_kwargs = dict(
            emb_dim=self.emb_dim,
            bottleneck_ratio=bottleneck_ratio,
            temporal_enhancement=self.temporal_enhancement,
            scale_shift_input=self.scale_shift_input,
            channel_split=self.channel_split,
            shuffle_groups=split_shuffle_groups,
        )
        self.stage1 = _BRPStage(in_channels, out_channels, dropout=0.0, **stage_kwargs)
        self.stage2 = _BRPStage(out_channels, out_channels, dropout=dropout, **stage_kwargs)

        project = (in_channels != out_channels) if project_shortcut is None else bool(project_shortcut)
        if not project and in_channels != out_channels:
            raise ValueError(
                f"project_shortcut=False needs in_channels == out_channels for an identity skip, "
                f"got in_channels={in_channels}, out_channels={out_channels}"
            )
        self.shortcut_kind = shortcut if project else "identity"
        self.shortcut: nn.Module
        if not project:
            self.shortcut = nn.Identity()
        elif shortcut == "conv":
            self.shortcut = PointwiseConv2d(in_channels, out_channels)
        else:
            check_positive_int(shortcut_groups, "shortcut_groups")
            if in_channels % shortcut_groups or out_channels % shortcut_groups:
                raise ValueError(
                    f"shortcut='group_shuffle' needs shortcut_groups to divide in_channels and out_channels, "
                    f"got shortcut_groups={shortcut_groups}, in_channels={in_channels}, "
                    f"out_channels={out_channels}"
                )
            self.shortcut = nn.Sequential(
                PointwiseConv2d(in_channels, out_channels, groups=shortcut_groups),
                ChannelShuffle(shortcut_groups),
            )

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor(x, "x", "(b, c, h, w)", sizes={"c": self.in_channels}, like=self)
        if emb is None:
            if self.needs_emb:
                raise ValueError(f"expected emb of shape (b, e) with e={self.emb_dim}, got None")
        else:
            # Checked even when unused, so a wrongly wired embedding fails the same way in every variant.
            if self.emb_dim is None:
                check_tensor(emb, "emb", "(b, e)", like=self)
            else:
                check_tensor(emb, "emb", "(b, e)", sizes={"e": self.emb_dim}, like=self)
            check_same_batch(x, "x", emb, "emb")
        check_group_norm_input(self, x)

        h = self.stage1(x, emb)  # b c_out h w
        h = self.stage2(h, emb)  # b c_out h w
        scale = _INV_SQRT2 if self.skip_rescale else None
        if self.shortcut_kind == "group_shuffle":
            # h + shuffle(grouped_conv(x)), the shuffle read as a strided view instead of a copy
            return add_channel_shuffled(h, self.shortcut[0](x), self.shortcut[1].groups, scale)  # b c_out h w
        out = torch.add(h, self.shortcut(x))  # b c_out h w
        return out.mul_(scale) if scale is not None else out  # in place: add keeps no output

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, emb_dim={self.emb_dim}, "
            f"bottleneck={self.bottleneck_channels}, temporal_enhancement={self.temporal_enhancement}, "
            f"scale_shift_input={self.scale_shift_input}, shortcut={self.shortcut_kind!r}, "
            f"channel_split={self.channel_split}"
        )
