"""1x1 convolution as a (grouped) matrix product over the flattened pixels.

A pointwise convolution ``(b, c_in, h, w) -> (b, c_out, h, w)`` is ``W @ x.flatten(2)`` per sample.
PyTorch computes the same thing, but on a CPU its convolution path first makes a channel slice of a
larger tensor contiguous (a copy of the slice) and runs a grouped convolution as one convolution
per group plus a concatenation. The matrix product reads the slice where it lies and does all groups
in one batched call, which halves the time of EVDM's bottleneck and group-shortcut convolutions on
the CPU (``bench/evdm_speed.py``). The result equals ``F.conv2d`` up to float rounding, and MAC
counters see it as the ``bmm``/``mm`` it is, with the same count as the convolution.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..validation import check_tensor

__all__ = ["pointwise_conv2d", "PointwiseConv2d"]


def pointwise_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, groups: int = 1
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, groups=groups)`` for a 1x1 kernel, computed as a matrix product.

    Shapes: x ``(b, c_in, h, w)`` (any strides, e.g. a channel slice), weight
    ``(c_out, c_in / groups, 1, 1)``, bias ``(c_out,)`` -> ``(b, c_out, h, w)``, contiguous. ``x``
    has the weight's dtype (any dtype under ``torch.autocast``) and device.
    """
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4 or weight.shape[2:] != (1, 1):
        raise ValueError(
            f"expected weight of shape (c_out, c_in / groups, 1, 1), got {tuple(getattr(weight, 'shape', ()))}"
        )
    check_tensor(x, "x", "(b, c, h, w)", like=weight, like_name="weight")
    b, c, h, w = x.shape
    out_channels = weight.shape[0]
    if c % groups or out_channels % groups or weight.shape[1] * groups != c:
        raise ValueError(
            f"expected x of shape (b, c, h, w) with c = {weight.shape[1] * groups} (weight's "
            f"{weight.shape[1]} input channels x groups={groups}), got c={c}"
        )
    g, o, i = groups, out_channels // groups, c // groups
    # One bmm over (b g) matrices: the kernel is broadcast over the batch (a stride-0 view for one
    # group), the pixels are a view of x (for NCHW tensors and their channel slices), the bias is
    # added by the same call.
    pixels = x.reshape(b * g, i, h * w)  # (b g) i hw
    kernel = weight.reshape(1, g, o, i).expand(b, g, o, i).reshape(b * g, o, i)  # (b g) o i
    if bias is None:
        out = torch.bmm(kernel, pixels)  # (b g) o hw
    else:
        shift = bias.view(1, g, o, 1).expand(b, g, o, 1).reshape(b * g, o, 1)  # (b g) o 1
        out = torch.baddbmm(shift, kernel, pixels)  # (b g) o hw
    return out.view(b, out_channels, h, w)


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` with a 1x1 kernel (stride 1, no padding) whose forward is :func:`pointwise_conv2d`.

    Same parameters, state-dict keys and initialisation as ``nn.Conv2d(in_channels, out_channels, 1,
    groups=groups, bias=bias)``, so checkpoints move between the two freely.
    Shapes: ``(b, in_channels, h, w) -> (b, out_channels, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_conv2d(x, self.weight, self.bias, self.groups)
