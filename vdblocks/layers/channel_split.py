"""EVDM's three-path channel split (section 3.4, Figure 2): bottleneck conv, pointwise conv, direct link.

Shapes: x ``(b, c_in, h, w)`` -> ``(b, c_out, h, w)``; frames live in the channel axis (EVDM's 2D U-Net).

Reading of the paper (section 3.4), with ``d`` the direct-link width and ``m = c_out - d`` the width the
convolution pathways produce:

* ``c_in < c_out`` (down path, widths grow): the whole input goes into the bottleneck convolution *and*,
  unchanged, into the direct link: ``d = c_in``, the two conv pathways give ``m = c_out - c_in`` channels
  (``ceil(m/2)`` from the 3x3 path, ``floor(m/2)`` from the pointwise path: the paper's
  ``(c_out - c_in)/2`` each), and ``c_in + m = c_out``.
* ``c_in >= c_out`` (up path, where the U-Net concatenates skips): the paper splits the input into
  ``c_out/2`` and ``c_in - c_out/2`` channels, "the former is sent into the bottleneck convolution, and
  the latter is concatenated with the output of the convolution pathways that have ``c_out/2`` channels".
  Taken literally that gives ``(c_in - c_out/2) + c_out/2 = c_in`` output channels, which is ``c_out``
  only when ``c_in == c_out``. We swap the two groups: the direct link takes ``d = floor(c_out/2)``
  input channels (the first ``d``), the bottleneck takes the other ``c_in - d``, and the conv pathways
  give ``m = c_out - d = ceil(c_out/2)``; so ``d + m = c_out`` exactly for every width, odd ones
  included, and no input channel is dropped. This is also the reading that reproduces the paper's
  numbers: inside :class:`~vdblocks.layers.bottleneck.BottleneckResidualPathway` with group shortcut
  (4 groups) and ``delta = 8`` it gives EVDM-L's Table 1 convolution parameters per level
  (1.36 / 2.99 / 4.73 / 7.26 M, total 16.33 M against the paper's 16.33 M); the literal
  reading with the surplus direct channels trimmed gives 16.23 M and drops input channels.

The bottleneck width is ``c_out // bottleneck_ratio`` (EVDM's ``C_0 / delta``, ``C_0`` the block's output
width), the same as the plain BRP stage; this too is what matches Table 1 / Table 8 (a width of
``m // delta`` would give 14.82 M for EVDM-L). After the concatenation ``[direct, 3x3, 1x1]`` a channel
shuffle (ShuffleNet) mixes the direct-link channels in, so that "the channel split [does not choose] a
fixed part of channels" in the next block.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..validation import check_positive_int, check_same_batch, check_tensor
from .bottleneck_conv import BottleneckConv
from .norm import check_group_norm_input
from .shuffle import channel_shuffle_permutation

__all__ = ["ChannelSplit"]


def _default_shuffle_groups(channels: int) -> int:
    """2 for even widths (ShuffleNet v2's two-branch shuffle), else the smallest divisor > 1.

    For a prime width that divisor is the width itself, where the shuffle is the identity.
    """
    if channels == 1:
        return 1
    for g in range(2, channels + 1):
        if channels % g == 0:
            return g
    return channels  # unreachable: channels divides itself


def _concat_shuffled(parts: list[torch.Tensor], groups: int) -> torch.Tensor:
    """``channel_shuffle(torch.cat(parts, dim=1), groups)`` with each value copied once.

    ``parts`` are ``(b, c_k, h, w)`` with ``sum(c_k) = c`` divisible by ``groups``. Channel
    ``i * (c / groups) + j`` of the concatenation goes to output channel ``j * groups + i``, so row
    ``i`` of the concatenation (its ``i``-th run of ``c / groups`` channels) becomes every
    ``groups``-th output channel: stacking the rows on a new axis after the channels *is* the
    shuffle. A row that lies inside one part is a view of it; only rows that span parts are
    concatenated first. Autograd splits the gradient back with views as well.
    """
    per_row = sum(p.shape[1] for p in parts) // groups
    rows: list[list[torch.Tensor]] = [[] for _ in range(groups)]
    start = 0
    for part in parts:
        done, n = 0, part.shape[1]
        while done < n:
            i, j = divmod(start + done, per_row)
            take = min(n - done, per_row - j)
            rows[i].append(part[:, done : done + take])  # b take h w
            done += take
        start += n
    stacked = torch.stack([r[0] if len(r) == 1 else torch.cat(r, dim=1) for r in rows], dim=2)  # b c/g g h w
    return stacked.flatten(1, 2)  # b c h w


class ChannelSplit(nn.Module):
    """Three-path channel split of EVDM (section 3.4, Figure 2), ``(b, c_in, h, w) -> (b, c_out, h, w)``.

    ``y = shuffle([x_d, paths(bottleneck(x_b))])`` with the direct link ``x_d`` (``d`` channels copied
    unchanged) and the bottleneck input ``x_b``:

    * ``c_in < c_out``: ``x_d = x_b = x``, ``d = c_in``;
    * ``c_in >= c_out``: ``x_d = x[:, :d]``, ``x_b = x[:, d:]``, ``d = c_out // 2``;

    ``paths`` is eq. 10 on the bottleneck of eq. 9: ``1x1 (c_b -> w)``, GroupNorm (scale-shift from
    ``emb`` when ``emb_dim`` is set: EVDM's temporal enhancement), then ``[3x3, 1x1]`` giving
    ``ceil(m/2) + floor(m/2) = m = c_out - d`` channels, with ``w = c_out // bottleneck_ratio``. The
    module expects the caller to have applied the pre-activation (inside the BRP: scale-shift
    GroupNorm and ReLU), so the direct link carries exactly what the block received. See the module
    docstring for the paper reading and the arithmetic.

    Args:
        in_channels: ``c_in``.
        out_channels: ``c_out``; ``c_out // bottleneck_ratio >= 1`` is required.
        emb_dim: width of the conditioning embedding ``(b, emb_dim)``; ``None`` (default) builds a
            plain GroupNorm on the bottleneck and ``forward`` takes no ``emb``.
        bottleneck_ratio: EVDM's ``delta`` (4 for EVDM, 8 for EVDM-L).
        shuffle_groups: groups of the final channel shuffle; must divide ``c_out``. ``None`` picks 2
            for even ``c_out``, else its smallest divisor > 1 (the identity for a prime width).

    Attributes: ``direct_channels`` (``d``), ``conv_channels`` (``m``), ``bottleneck_in_channels``
    (``c_b``), ``bottleneck_channels`` (``w``), ``shuffle_groups``; :meth:`direct_link_map` says which
    output channel copies which input channel.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int | None = None,
        bottleneck_ratio: int = 4,
        shuffle_groups: int | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.emb_dim = None if emb_dim is None else check_positive_int(emb_dim, "emb_dim")
        self.bottleneck_ratio = check_positive_int(bottleneck_ratio, "bottleneck_ratio")
        if out_channels // bottleneck_ratio < 1:
            raise ValueError(
                f"expected out_channels >= bottleneck_ratio so the bottleneck (out_channels // "
                f"bottleneck_ratio channels) keeps at least one channel, got out_channels={out_channels}, "
                f"bottleneck_ratio={bottleneck_ratio}"
            )
        if shuffle_groups is None:
            shuffle_groups = _default_shuffle_groups(out_channels)
        self.shuffle_groups = check_positive_int(shuffle_groups, "shuffle_groups")
        if out_channels % shuffle_groups:
            raise ValueError(
                f"expected shuffle_groups to divide out_channels, got shuffle_groups={shuffle_groups}, "
                f"out_channels={out_channels}"
            )

        if in_channels < out_channels:
            self.direct_channels = in_channels
            self.bottleneck_in_channels = in_channels
        else:
            self.direct_channels = out_channels // 2
            self.bottleneck_in_channels = in_channels - self.direct_channels
        self.conv_channels = out_channels - self.direct_channels
        self.bottleneck_channels = out_channels // bottleneck_ratio
        self.paths = BottleneckConv(
            self.bottleneck_in_channels, self.bottleneck_channels, self.conv_channels, self.emb_dim
        )
        # Where each output channel comes from in the pre-shuffle concatenation [direct, conv].
        self.register_buffer(
            "_source", channel_shuffle_permutation(out_channels, self.shuffle_groups), persistent=False
        )

    @property
    def splits_input(self) -> bool:
        """True in the ``c_in >= c_out`` case, where direct link and bottleneck see disjoint channels."""
        return self.in_channels >= self.out_channels

    def direct_link_map(self) -> list[tuple[int, int]]:
        """``[(out_idx, in_idx), ...]``: ``y[:, out_idx]`` is an exact copy of ``x[:, in_idx]``.

        Sorted by ``out_idx``; one entry per direct-link channel (``direct_channels`` entries). In both
        cases the direct link is the first ``d`` input channels, so the pre-shuffle position equals
        the input index.
        """
        return [(i, int(src)) for i, src in enumerate(self._source.tolist()) if src < self.direct_channels]

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor(x, "x", "(b, c, h, w)", sizes={"c": self.in_channels}, like=self)
        if self.emb_dim is None:
            if emb is not None:
                raise ValueError(
                    "expected no emb: ChannelSplit was built with emb_dim=None; build it with emb_dim=e "
                    f"to condition on an emb of shape (b, e), got {type(emb).__name__} "
                    f"{tuple(getattr(emb, 'shape', ()))}"
                )
        else:
            if emb is None:
                raise ValueError(f"expected emb of shape (b, e) with e={self.emb_dim}, got None")
            check_tensor(emb, "emb", "(b, e)", sizes={"e": self.emb_dim}, like=self)
            check_same_batch(x, "x", emb, "emb")
        check_group_norm_input(self, x)

        d = self.direct_channels
        if self.splits_input:
            # split, not two slices: its gradient is one concatenation, not two zero-filled copies
            direct, x_b = x.split([d, self.in_channels - d], dim=1)  # b d h w, b (c_in - d) h w
        else:
            direct, x_b = x, x  # b c_in h w, both paths see the whole input
        parts = [direct, *self.paths.branches(x_b, emb)]  # b d h w, b ceil(m/2) h w, b floor(m/2) h w
        return _concat_shuffled(parts, self.shuffle_groups)  # b c_out h w: shuffle([direct, conv])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, emb_dim={self.emb_dim}, "
            f"bottleneck_ratio={self.bottleneck_ratio}, direct={self.direct_channels}, "
            f"conv={self.conv_channels}, bottleneck={self.bottleneck_channels}, "
            f"shuffle_groups={self.shuffle_groups}"
        )
