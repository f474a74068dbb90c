"""A small 3D patch discriminator for PVDM's adversarial autoencoder term (appendix A).

PVDM trains its autoencoder with "the sum of hinge-loss and feature similarity between real samples
and their reconstructions, following the objective used in TATS"; TATS's video discriminator is
pix2pix's ``NLayerDiscriminator`` with 3D convolutions. This is that network: a stride-2
convolution with LeakyReLU, ``layers - 1`` more stride-2 convolutions doubling the width (capped at
8x) with GroupNorm (our choice over BatchNorm: one training sample per GPU still normalises
sensibly, and no running statistics need syncing under DDP; at least two channels per group, so a
``1 x 1 x 1`` activation still normalises), one stride-1 convolution and a final
one-channel convolution giving a logit per space-time patch. Kernels are ``3x3x3`` with padding 1
(TATS: ``4x4x4``), so a stride-2 layer maps every size ``n >= 1`` to ``ceil(n / 2) >= 1`` and
short clips or small frames never shrink to nothing.

Shapes: ``x (b, c, T, H, W) -> logits (b, 1, t', h', w')``; :meth:`PatchDiscriminator3D.features`
(or ``forward(x, return_features=True)``) also returns the activation after every block, for the
feature-matching term. Any ``T, H, W >= 1``
works.
"""

from __future__ import annotations

import torch
from torch import nn

from vdblocks.layers.norm import group_norm
from vdblocks.validation import check_positive_int, check_tensor

__all__ = ["PatchDiscriminator3D"]


class PatchDiscriminator3D(nn.Module):
    """TATS / pix2pix 3D patch discriminator: ``(b, c, T, H, W) -> (b, 1, t', h', w')`` logits."""

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        check_positive_int(channels, "channels")
        check_positive_int(layers, "layers")
        blocks = [nn.Sequential(nn.Conv3d(in_channels, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2))]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks.append(
                nn.Sequential(
                    nn.Conv3d(width, out, 3, stride=stride, padding=1, bias=False),
                    group_norm(out, max(1, out // 2)),
                    nn.LeakyReLU(0.2),
                )
            )
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv3d(width, 1, 3, stride=1, padding=1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits (b, 1, t', h', w'), [activation after each block])``."""
        check_tensor(x, "x", "(b, c, t, h, w)", sizes={"c": self.in_channels})
        feats = []
        for block in self.blocks:
            x = block(x)  # b c' t' h' w'
            feats.append(x)
        return self.head(x), feats

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Logits ``(b, 1, t', h', w')``, or ``(logits, activations)`` with ``return_features``."""
        logits, feats = self.features(x)
        return (logits, feats) if return_features else logits
