"""Parameter-free 2x up- and downsampling of feature maps, with or without score_sde's FIR filter."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..validation import check_tensor

__all__ = ["Resample2d"]

ResampleMode = Literal["up", "down"]

_TAPS = (1.0, 3.0, 3.0, 1.0)


class Resample2d(nn.Module):
    """2x up- or downsampling: ``(b, c, h, w) -> (b, c, 2h, 2w)`` (``"up"``) or ``(b, c, h // 2, w // 2)``
    (``"down"``, ``h, w >= 2``). No parameters.

    ``fir=True``: the separable FIR filter ``k = [1, 3, 3, 1]`` of score_sde's ``upsample_2d`` /
    ``downsample_2d`` (``upfirdn2d`` with pads (2, 1) up and (1, 1) down; gain 4 up, so that the
    average value is kept), used by NCSN++ and MCVD's BigGAN++ res blocks. It runs as a depthwise
    (transposed) convolution, so MAC counters see it: ``16 c h w`` MACs per sample up (input
    ``h x w``), ``16 c h' w'`` down (output ``h' x w'``). ``fir=False``: nearest-neighbour
    upsampling / 2x2 average pooling (score_sde's ``naive_upsample_2d`` / ``naive_downsample_2d``),
    which no MAC counter counts.

    Any floating dtype (the filter is cast to the input's); the input must be on the module's device.
    """

    def __init__(self, mode: ResampleMode, fir: bool = True) -> None:
        super().__init__()
        if mode not in ("up", "down"):
            raise ValueError(f"expected mode 'up' or 'down', got {mode!r}")
        self.mode = mode
        self.fir = bool(fir)
        gain = (4.0 if mode == "up" else 1.0) / sum(_TAPS) ** 2  # up: factor**2 keeps the DC gain at 1
        kernel = [[a * b * gain for b in _TAPS] for a in _TAPS]  # plain floats: cheap on the meta device too
        self.register_buffer("kernel", torch.tensor([[kernel]]), persistent=False)  # 1 1 4 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(b, c, h, w)", like=self, match_dtype=False)
        if self.mode == "down" and min(x.shape[-2:]) < 2:
            raise ValueError(f"expected x of shape (b, c, h, w) with h, w >= 2 to downsample, got {tuple(x.shape)}")
        c = x.shape[1]
        if not self.fir:
            if self.mode == "up":
                return F.interpolate(x, scale_factor=2.0, mode="nearest")  # b c 2h 2w
            return F.avg_pool2d(x, 2)  # b c h/2 w/2
        weight = self.kernel.to(x.dtype).expand(c, 1, 4, 4)
        if self.mode == "up":
            return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=c)  # b c 2h 2w
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), weight, stride=2, groups=c)  # b c h/2 w/2

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, fir={self.fir}"
