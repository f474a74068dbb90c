"""CMD's encoder heads: a softmax-over-time content frame and 2D-projected motion latents.

CMD (Yu et al., ICLR 2024), section 3.2. A video transformer ``f_B`` turns the video
``x (b, c, t, H, W)`` into features ``u (b, c', t, h, w)`` with ``h = H / p``, ``w = W / p`` for a
patch size ``p``. Two heads read ``u``:

* :class:`ContentFrameHead` (eq. 3): ``x_bar = sum_l x_l * softmax_l(f_I(u))_l``, a per-pixel,
  per-channel convex combination of the frames, so it looks like a frame and an image diffusion
  model can generate it;
* :class:`MotionLatentHead` (eq. 4): ``(z_x, z_y) = (f_M(mean_x u), f_M(mean_y u))`` with ``f_M``
  a 1x1 convolution ``c' -> D``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange, reduce, repeat

from ..validation import check_positive_int, check_same_batch, check_tensor

__all__ = ["ContentFrameHead", "MotionLatentHead"]


class ContentFrameHead(nn.Module):
    """CMD's content frame (eq. 3): frames weighted by a softmax over time of importance logits.

    Shapes: video ``x (b, c, t, H, W)`` and features ``u (b, dim, t, h, w)`` ->
    ``(content_frame (b, c, H, W), weights (b, c, t, H, W))``; ``weights`` are positive and sum to
    1 over ``t``, so every pixel of the content frame lies between that pixel's min and max over
    the frames, and a static video returns its frame.

    ``f_I`` maps ``c' x L x H' x W' -> C x L x H x W`` (CMD section 3.2). We implement it as a
    per-token linear (a 1x1x1 convolution) followed by an unpatchify, the usual ViT output head:

    * ``patch_size=p`` given: the linear maps ``dim -> c p p`` and
      ``b t h w (c p1 p2) -> b c t (h p1) (w p2)`` lays the logits out at full resolution, so each
      pixel of a patch has its own logit (CMD's per-pixel weights). ``H = h p`` and ``W = w p`` are
      then required.
    * ``patch_size=None`` (default): the linear maps ``dim -> c`` and the patch size is inferred on
      each call from ``p = H / h = W / w`` (which must be a whole number, equal on both axes); each
      logit is repeated over its ``p x p`` patch, so pixels of one patch share their weights. This
      reading keeps one head usable at several patch sizes; pass ``patch_size`` for per-pixel weights.

    Half-precision logits take their softmax in float32 (so the weights still sum to 1 to rounding);
    float32 and float64 stay as they are, so a float64 head is float64 end to end. ``x`` and ``u``
    must have the head's dtype and device (any dtype under ``torch.autocast``).
    """

    def __init__(self, dim: int, channels: int, patch_size: int | None = None, bias: bool = True) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.channels = check_positive_int(channels, "channels")
        self.patch_size = None if patch_size is None else check_positive_int(patch_size, "patch_size")
        per_token = channels * (self.patch_size or 1) ** 2
        self.to_logits = nn.Linear(dim, per_token, bias=bias)

    def _patch(self, x: torch.Tensor, u: torch.Tensor) -> int:
        (H, W), (h, w) = x.shape[-2:], u.shape[-2:]
        if self.patch_size is not None:
            p = self.patch_size
            if (H, W) != (h * p, w * p):
                raise ValueError(
                    f"expected x of shape (b, c, t, H, W) with H = h * patch_size = {h * p} and "
                    f"W = w * patch_size = {w * p} for u (b, dim, t, h, w) = {tuple(u.shape)}, "
                    f"got x {tuple(x.shape)}"
                )
            return p
        if H % h or W % w or H // h != W // w:
            raise ValueError(
                f"expected x of shape (b, c, t, H, W) with H = h * p and W = w * p for one whole "
                f"patch size p, given u (b, dim, t, h, w) = {tuple(u.shape)}; got x {tuple(x.shape)}"
            )
        return H // h

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_tensor(x, "x", "(b, c, t, H, W)", sizes={"c": self.channels}, like=self)
        check_tensor(u, "u", "(b, dim, t, h, w)", sizes={"dim": self.dim, "t": x.shape[2]}, like=self)
        check_same_batch(x, "x", u, "u")
        p = self._patch(x, u)
        tokens = self.to_logits(rearrange(u, "b c t h w -> b t h w c"))  # b t h w (c p p)
        if self.patch_size is not None:
            logits = rearrange(tokens, "b t h w (c p1 p2) -> b c t (h p1) (w p2)", p1=p, p2=p)
        else:
            logits = repeat(tokens, "b t h w c -> b c t (h p1) (w p2)", p1=p, p2=p)  # b c t H W
        if logits.dtype in (torch.float16, torch.bfloat16):
            weights = logits.float().softmax(dim=2).to(logits.dtype)  # b c t H W, sums to 1 over t
        else:
            weights = logits.softmax(dim=2)  # float32 / float64 as they are: no downcast
        content = (x * weights).sum(dim=2)  # b c H W
        return content, weights

    def extra_repr(self) -> str:
        return f"dim={self.dim}, channels={self.channels}, patch_size={self.patch_size}"


class MotionLatentHead(nn.Module):
    """CMD's motion latents (eq. 4): features averaged across one spatial axis, then a 1x1 conv.

    Shapes: ``u (b, dim, t, h, w)`` -> ``(z_x (b, D, t, h), z_y (b, D, t, w))`` with
    ``D = motion_channels``. Following CMD's naming, ``x`` is the horizontal (width) axis:
    ``z_x = f_M(mean over w of u)`` lives on the ``t x h`` grid (CMD: ``z_x in R^{D x L x H'}``) and
    ``z_y = f_M(mean over h of u)`` on the ``t x w`` grid (``z_y in R^{D x L x W'}``).

    CMD applies one ``f_M`` to both projections (eq. 4); ``shared=False`` gives each its own.
    """

    def __init__(self, dim: int, motion_channels: int, shared: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.motion_channels = check_positive_int(motion_channels, "motion_channels")
        self.shared = bool(shared)
        self.f_x = nn.Conv2d(dim, motion_channels, kernel_size=1, bias=bias)
        # Shared: one module, so the state dict holds f_M once.
        self.f_y = None if shared else nn.Conv2d(dim, motion_channels, kernel_size=1, bias=bias)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_tensor(u, "u", "(b, dim, t, h, w)", sizes={"dim": self.dim}, like=self)
        u_x = reduce(u, "b c t h w -> b c t h", "mean")  # averaged across x (width)
        u_y = reduce(u, "b c t h w -> b c t w", "mean")  # averaged across y (height)
        f_y = self.f_x if self.f_y is None else self.f_y
        return self.f_x(u_x), f_y(u_y)  # b D t h, b D t w

    def extra_repr(self) -> str:
        return f"dim={self.dim}, motion_channels={self.motion_channels}, shared={self.shared}"
